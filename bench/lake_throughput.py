"""Lake sink throughput: a Kafka topic of ~200-byte JSON records -> Iceberg, 1 s commits.

The input is ``transactions`` from the generator (seed 42; ~185 bytes of JSON a record),
produced once to ``bench.lake.tx.<N>.p<P>`` on the local Kafka (``tidelake.infra``) and
reused while it holds exactly N records. The flow is the pipeline file a user would write
(``topic -> lake``, ``batch: {size: 1000000, max_latency: 1}``: a commit every second),
run as ``tidelake run`` pinned to one core with ``taskset -c <cpu>``. This process (pinned
to another core) only watches the table's snapshot summaries.

Reported: wall time from process start to the last row committed, the steady rate
(rows committed between the first and the last snapshot / time between them, i.e. without
process start-up and consumer-group join), commits, the flow's CPU seconds.

``--profile`` runs the same flow in this process under cProfile (pinned to the same core)
and prints where the time goes, grouped into stages and by function.

    .venv/bin/python bench/lake_throughput.py [--records 3000000] [--cpu 0] [--profile]
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from tidelake import infra
from tidelake.broker import connect
from tidelake.config import Pipeline, load
from tidelake.errors import QueryError
from tidelake.formats import encode_json
from tidelake.lake.catalog import load_table
from tidelake.sources.generator import generate

TABLE = "tx"
SEED = 42

PIPELINE = """\
name: bench_lake_{run}
broker: {broker}
lake: file://{lake}
flows:
  land:
    source: {{type: topic, topic: {topic}, group: bench.lake.{run}}}
    sink: {{type: lake, table: {table}}}
    batch: {{size: {size}, max_latency: {latency}}}
"""


def ensure_input(broker_url: str, records: int, partitions: int) -> tuple[str, int]:
    """The input topic holding exactly ``records`` records, produced if needed; its bytes."""
    topic = f"bench.lake.tx.{records}.p{partitions}"
    broker = connect(broker_url)
    try:
        if topic in broker.topics() and sum(broker.end_offsets(topic).values()) == records:
            sample = encode_json(generate("transactions", 0, 1000, SEED))
            return topic, int(sum(map(len, sample)) / len(sample) * records)
        if topic in broker.topics():
            topic = f"{topic}.{uuid.uuid4().hex[:6]}"
        broker.create_topic(topic, partitions)
        producer = broker.producer()
        size, step, t0 = 0, 100_000, time.perf_counter()
        for start in range(0, records, step):
            values = encode_json(generate("transactions", start, min(step, records - start), SEED))
            size += sum(map(len, values))
            producer.produce(topic, values)
        producer.flush()
        producer.close()
        print(
            f"produced {records:,} records ({size / records:.0f} B avg) to {topic} "
            f"in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        return topic, size
    finally:
        broker.close()


def write_pipeline(base: Path, broker_url: str, topic: str, size: int, latency: float) -> Path:
    run = uuid.uuid4().hex[:8]
    path = base / "pipeline.yaml"
    path.write_text(
        PIPELINE.format(
            run=run,
            broker=broker_url,
            lake=base / "lake",
            topic=topic,
            table=TABLE,
            size=size,
            latency=latency,
        )
    )
    return path


def history(pipeline: Pipeline) -> list[tuple[float, int]]:
    """(commit time, total rows) of every snapshot, oldest first."""
    try:
        table = load_table(pipeline, TABLE)
    except QueryError:
        return []
    out = []
    for s in table.snapshots():
        props = s.summary.additional_properties if s.summary else {}
        out.append((s.timestamp_ms / 1000, int(props.get("total-records", 0))))
    return sorted(out)


def landed(pipeline: Pipeline) -> int:
    h = history(pipeline)
    return h[-1][1] if h else 0


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_at(samples: list[tuple[float, float]], t: float) -> float:
    """Flow CPU seconds at wall time ``t``, interpolated between samples."""
    for (t0, c0), (t1, c1) in zip(samples, samples[1:], strict=False):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c0
    return samples[-1][1] if samples and t > samples[-1][0] else samples[0][1]


def run_pinned(path: Path, records: int, cpu: int, timeout: float) -> dict[str, float]:
    pipeline = load(path)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = open(path.parent / "flow.log", "wb")  # noqa: SIM115
    started = time.time()
    proc = subprocess.Popen(
        ["taskset", "-c", str(cpu), sys.executable, "-m", "tidelake.cli", "run", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    samples: list[tuple[float, float]] = []  # (wall time, flow CPU seconds)
    try:
        deadline = time.monotonic() + timeout
        while landed(pipeline) < records:
            samples.append((time.time(), proc_cpu(proc.pid)))
            if proc.poll() is not None:
                raise SystemExit(f"flow exited: {(path.parent / 'flow.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {landed(pipeline):,} of {records:,} rows landed")
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    h = history(pipeline)
    (t_first, n_first), (t_last, n_last) = h[0], h[-1]
    steady_cpu = cpu_at(samples, t_last) - cpu_at(samples, t_first)
    gaps = sorted(b[0] - a[0] for a, b in zip(h, h[1:], strict=False)) or [0.0]
    return {
        "gap_p50": gaps[len(gaps) // 2],
        "gap_max": gaps[-1],
        "steady_cpu": steady_cpu,
        "steady_cpu_rate": (n_last - n_first) / steady_cpu if steady_cpu > 0 else 0.0,
        "core_share": steady_cpu / (t_last - t_first) if t_last > t_first else 0.0,
        "records": n_last,
        "wall": t_last - started,
        "steady_rate": (n_last - n_first) / (t_last - t_first) if t_last > t_first else 0.0,
        "commits": len(h),
        "first_commit_after": t_first - started,
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
    }


STAGES = [  # (label, function key substrings, depth for indentation); cumulative time
    ("flow loop (FlowRunner.run)", ["runner.py", "(run)"], 0),
    ("source.read (topic)", ["sources/topic.py", "(read)"], 1),
    ("Kafka poll: consume() + per-record MessageBatch lists", ["broker/kafka.py", "(poll)"], 2),
    ("of which librdkafka consume()", ["cimpl.Consumer", "consume"], 3),
    ("next_offsets (per-record Python loop)", ["broker/base.py", "(next_offsets)"], 2),
    ("_decode: JSON -> Arrow + provenance", ["sources/topic.py", "(_decode)"], 2),
    ("of which decode_json (Arrow JSON reader)", ["formats/json.py", "(decode_json)"], 3),
    ("flush (concat, transforms, sink write)", ["runner.py", "(flush)"], 1),
    ("lake sink write", ["sinks/lake.py", "(write)"], 2),
    ("fence (provenance filter)", ["sinks/lake.py", "(fence)"], 3),
    ("schema normalize/evolution/conform", ["lake/schema.py", "(conform)"], 3),
    ("data files: partition split + Parquet write", ["_dataframe_to_data_files"], 3),
    ("of which _determine_partitions", ["_determine_partitions"], 4),
    ("of which write_file (Parquet)", ["pyarrow.py", "(write_file)"], 4),
    (
        "Iceberg commit (manifests, metadata.json, catalog)",
        ["table/__init__.py", "(commit_transaction)"],
        3,
    ),
    ("source.committed (Kafka offset commit)", ["sources/topic.py", "(committed)"], 1),
]


class _Timed:
    """Accumulates process CPU time (all threads: librdkafka's too) and calls per stage."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner: object, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        def timed(*args: object, **kwargs: object) -> object:
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[label] = self.cpu.get(label, 0.0) + time.process_time() - t0
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(owner, attr, timed)


class _ConsumeProxy:
    def __init__(self, inner: object, timer: _Timed) -> None:
        self._inner = inner
        timer.wrap(self, "consume", "librdkafka consume()")

    def consume(self, *args: object) -> object:
        return self._inner.consume(*args)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


STAGE_TREE = [  # (label, depth): the order and nesting the stage report prints
    ("flow loop", 0),
    ("source.read (topic)", 1),
    ("Kafka poll (consume + per-record MessageBatch lists)", 2),
    ("librdkafka consume()", 3),
    ("next_offsets (per-record Python loop)", 2),
    ("_decode (JSON -> Arrow, provenance columns)", 2),
    ("decode_json (Arrow JSON reader)", 3),
    ("buffer a read (fence + conform)", 1),
    ("fence (provenance filter)", 2),
    ("flush (concat + sink write)", 1),
    ("lake sink write", 2),
    ("schema conform", 3),
    ("Iceberg append (data files + manifests)", 3),
    ("write_file (Parquet)", 4),
    ("Iceberg commit (metadata.json + catalog)", 3),
    ("source.committed (Kafka offset commit)", 1),
]


def stages(path: Path, records: int, cpu: int) -> None:
    """Run the flow in-process pinned to ``cpu`` with low-overhead per-call timers around
    each stage (per batch, not per record: unlike cProfile, it does not inflate the
    per-record Python work) and print the CPU seconds each stage took."""
    import pyiceberg.io.pyarrow as pyiceberg_arrow
    import pyiceberg.table as pyiceberg_table

    from tidelake.broker import base, kafka
    from tidelake.lake import schema
    from tidelake.runtime import positions
    from tidelake.runtime.runner import FlowRunner
    from tidelake.sinks import lake
    from tidelake.sources import topic

    os.sched_setaffinity(0, {cpu})
    timer = _Timed()
    for owner, attr, label in (
        (FlowRunner, "run", "flow loop"),
        (FlowRunner, "flush", "flush (concat + sink write)"),
        (topic.TopicSource, "read", "source.read (topic)"),
        (topic.TopicSource, "committed", "source.committed (Kafka offset commit)"),
        (kafka.KafkaConsumer, "poll", "Kafka poll (consume + per-record MessageBatch lists)"),
        (base.MessageBatch, "next_offsets", "next_offsets (per-record Python loop)"),
        (topic.TopicSource, "_decode", "_decode (JSON -> Arrow, provenance columns)"),
        (topic, "decode_json", "decode_json (Arrow JSON reader)"),
        (lake.LakeSink, "write", "lake sink write"),
        (FlowRunner, "_add", "buffer a read (fence + conform)"),
        (positions, "fence", "fence (provenance filter)"),
        (schema, "conform", "schema conform"),
        (pyiceberg_table.Transaction, "append", "Iceberg append (data files + manifests)"),
        (pyiceberg_arrow, "write_file", "write_file (Parquet)"),
        (
            pyiceberg_table.Transaction,
            "commit_transaction",
            "Iceberg commit (metadata.json + catalog)",
        ),
    ):
        timer.wrap(owner, attr, label)
    make_consumer = kafka.KafkaBroker.consumer

    def consumer(self: kafka.KafkaBroker, *args: object, **kwargs: object) -> object:
        c = make_consumer(self, *args, **kwargs)  # type: ignore[arg-type]
        c._c = _ConsumeProxy(c._c, timer)  # type: ignore[assignment]
        return c

    kafka.KafkaBroker.consumer = consumer  # type: ignore[method-assign]

    stop = threading.Event()
    runner = FlowRunner(load(path), "land", stop)

    def watch() -> None:
        while not stop.is_set():
            if runner.metrics.records_out >= records:
                stop.set()
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    w0, c0 = time.perf_counter(), time.process_time()
    runner.run()
    wall, spent = time.perf_counter() - w0, time.process_time() - c0
    n = runner.metrics.records_out
    print(
        f"in-process run pinned to cpu {cpu}: {n:,} rows in {wall:.1f} s wall, "
        f"{spent:.1f} CPU-s ({n / spent:,.0f} rows per CPU-second, start-up of the flow "
        "included, interpreter start-up excluded)"
    )
    total = timer.cpu["flow loop"]
    print(f"CPU seconds by stage (process CPU clock, all threads; flow loop = {total:.1f} s):")
    for label, depth in STAGE_TREE:
        t = timer.cpu.get(label, 0.0)
        print(
            f"  {t:7.2f} s {100 * t / total:5.1f}%  {1e6 * t / n:6.2f} us/row  "
            f"{'  ' * depth}{label} ({timer.calls.get(label, 0)} calls)"
        )


def profile(path: Path, records: int, cpu: int, top: int) -> None:
    """Run the flow in-process under cProfile, pinned to ``cpu``; print stages and functions."""
    here = Path(__file__).resolve().parent  # bench/profile/ shadows the stdlib module cProfile uses
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.modules.pop("profile", None)
    import cProfile

    from tidelake.runtime.runner import FlowRunner

    os.sched_setaffinity(0, {cpu})
    pipeline = load(path)
    stop = threading.Event()
    runner = FlowRunner(pipeline, "land", stop)

    def watch() -> None:
        while not stop.is_set():
            if runner.metrics.records_out >= records:
                stop.set()
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    prof = cProfile.Profile(time.process_time)  # CPU, not waiting: the core is what counts
    t0 = time.perf_counter()
    prof.enable()
    runner.run()
    prof.disable()
    wall = time.perf_counter() - t0
    print(
        f"profiled run: {runner.metrics.records_out:,} rows in {wall:.1f} s "
        f"({runner.metrics.records_out / wall:,.0f} rows/s incl. start-up, under cProfile)"
    )
    stats = pstats.Stats(prof)
    entries = stats.stats  # type: ignore[attr-defined]
    total = max(ct for (_, _, _, ct, _) in entries.values())
    print(f"cumulative CPU time by stage (cProfile, process CPU clock; total {total:.1f} s):")
    for label, needles, depth in STAGES:
        t = sum(
            ct
            for (file, line, fn), (_, _, _, ct, _) in entries.items()
            if all(n in f"{file}:{line}({fn})" for n in needles)
        )
        print(f"  {t:7.2f} s {100 * t / total:5.1f}%  {'  ' * depth}{label}")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(key).print_stats(top)
        print(f"--- top {top} by {key} ---")
        print("\n".join(out.getvalue().splitlines()[6:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=3_000_000)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1_000_000)
    parser.add_argument("--max-latency", type=float, default=1.0, help="seconds between commits")
    parser.add_argument("--cpu", type=int, default=0, help="core the flow is pinned to")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--profile", action="store_true", help="cProfile the flow in-process")
    parser.add_argument(
        "--stages", action="store_true", help="time each stage of the flow in-process"
    )
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()

    broker_url = infra.up(["kafka"])["kafka"]
    others = set(range(os.cpu_count() or 1)) - {args.cpu}
    if others:
        os.sched_setaffinity(0, others)  # the watcher stays off the flow's core
    topic, size = ensure_input(broker_url, args.records, args.partitions)
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            path = write_pipeline(Path(tmp), broker_url, topic, args.batch_size, args.max_latency)
            if args.profile:
                profile(path, args.records, args.cpu, args.top)
                continue
            if args.stages:
                stages(path, args.records, args.cpu)
                continue
            r = run_pinned(path, args.records, args.cpu, args.timeout)
            print(
                f"run {i + 1}: {r['records']:,.0f} rows ({size / args.records:.0f} B/record)  "
                f"wall {r['wall']:.1f} s = {r['records'] / r['wall']:,.0f} rows/s  "
                f"steady {r['steady_rate']:,.0f} rows/s  commits {r['commits']:.0f}  "
                f"first commit after {r['first_commit_after']:.1f} s  "
                f"commit interval p50 {r['gap_p50']:.2f} s, max {r['gap_max']:.2f} s"
            )
            print(
                f"  flow CPU total {r['cpu']:.1f} s (incl. start-up)  steady: "
                f"{r['steady_cpu']:.1f} CPU-s = {r['steady_cpu_rate']:,.0f} rows per CPU-second, "
                f"the flow got {100 * r['core_share']:.0f}% of its core"
            )


if __name__ == "__main__":
    main()
