"""tidelake on Apache Spark: flow w2 of bench/pipelines/users_w1.yaml with ``engine: spark``
(``local[2]``), driven by ``SparkFlowRunner``, into the same Iceberg lake.

The measured window runs from the start of Spark's first micro-batch with input to the end
of the micro-batch that read the last input record (its rows committed to the lake); CPU per
record is measured over the micro-batches after the first (which also pays for start-up).
CPU and peak RSS are the Python driver's plus the JVM's (a child process): Spark's work
happens in the JVM and its Python workers, none of which ``RUSAGE_SELF`` sees.
``startup_s`` is from this process's start to that first micro-batch.
"""

from __future__ import annotations

import os
import threading
import time
from importlib.metadata import version
from pathlib import Path

from bench.common import DEFAULT_KEY, KEY_ENV, cpu_seconds, peak_rss_mb, worker_args
from bench.workers.tidelake import PIPELINE, load_flow

STARTED = time.time()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _tree() -> list[int]:
    todo, seen = _children(os.getpid()), []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo += _children(pid)
    return seen


def tree_cpu_seconds() -> float:
    """This process's CPU time plus its live descendants' (the JVM, Spark's Python workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = cpu_seconds()
    for pid in _tree():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def tree_peak_rss_mb() -> float:
    total = peak_rss_mb() or 0.0
    for pid in _tree():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return round(total, 1)


def main() -> None:
    a = worker_args()
    if a.workload != "W2":
        raise SystemExit("tidelake_spark runs W2 only")
    os.environ.setdefault(KEY_ENV, DEFAULT_KEY)
    os.environ.update(
        BENCH_BROKER=f"kafka://{a.brokers}",
        BENCH_INPUT=a.input,
        BENCH_OUTPUT=a.output,
        BENCH_GROUP=a.group,
        BENCH_LAKE=f"file://{a.output}",
        BENCH_PIPELINE=a.group,
    )
    from tidelake.spark.runner import SparkFlowRunner

    pipeline = load_flow(PIPELINE.read_text(), "w2", Path(a.workdir) / "pipeline.yaml")
    flow = pipeline.flows["w2"].model_copy(update={"engine": "spark"})
    spark = pipeline.spark.model_copy(update={"master": "local[2]"})
    pipeline = pipeline.model_copy(
        update={"base_dir": Path(a.workdir), "flows": {"w2": flow}, "spark": spark}
    )
    runner = SparkFlowRunner(pipeline, "w2")
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    cpu_first = t_first = None
    while runner.metrics.records_in < a.records:
        if not thread.is_alive():
            raise SystemExit(f"spark flow ended early: {runner.metrics.last_error}")
        if t_first is None and runner.metrics.records_in:
            # the first micro-batch with input started its duration before its progress came
            t_first = time.time() - runner.metrics.last_batch_seconds
            cpu_first = tree_cpu_seconds()  # after the first batch: start-up excluded
            first_batch = runner.metrics.records_in
        time.sleep(0.05)
    t_end, cpu_end, rss = time.time(), tree_cpu_seconds(), tree_peak_rss_mb()
    runner.stop.set()
    thread.join(120)
    import json

    n = runner.metrics.records_in - first_batch  # the CPU of the first batch is not counted
    Path(a.stats).write_text(
        json.dumps(
            {
                "vm_hwm_mb": rss,
                "t_first": t_first,
                "t_end": t_end,
                # CPU per record as over the batches after the first (start-up excluded)
                "cpu_first": cpu_end - (cpu_end - cpu_first) * runner.metrics.records_in / n,
                "cpu_end": cpu_end,
                "records_in": runner.metrics.records_in,
                "version": f"tidelake {version('tidelake')} on pyspark {version('pyspark')} "
                "local[2] (maxOffsetsPerTrigger 100000)",
                "records_out": runner.metrics.records_out,
                "startup_s": round(t_first - STARTED, 2),
                "batches": runner.metrics.batches,
            }
        )
    )


if __name__ == "__main__":
    main()
