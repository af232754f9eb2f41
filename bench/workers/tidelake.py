"""tidelake: the pipeline in bench/pipelines/users_w1.yaml, driven by FlowRunner."""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path

from bench.common import DEFAULT_KEY, KEY_ENV, Meter, worker_args

PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "users_w1.yaml"


def main() -> None:
    a = worker_args()
    os.environ.setdefault(KEY_ENV, DEFAULT_KEY)
    os.environ.update(
        BENCH_BROKER=f"kafka://{a.brokers}",
        BENCH_INPUT=a.input,
        BENCH_OUTPUT=a.output,
        BENCH_GROUP=a.group,
        BENCH_LAKE=f"file://{a.output}",
        BENCH_PIPELINE=a.group,  # unique per run (see the pipeline file)
    )
    from tidelake.config import loads
    from tidelake.runtime.runner import FlowRunner

    # the pipeline "lives" in the run's scratch dir: its .tidelake state (checkpoints) is fresh
    pipeline = loads(PIPELINE.read_text(), Path(a.workdir) / "pipeline.yaml")
    pipeline = pipeline.model_copy(update={"base_dir": Path(a.workdir)})
    runner = FlowRunner(pipeline, a.workload.lower())
    meter = Meter(a.records)
    read = runner.source.read

    def counted(max_records: int, timeout: float):
        if meter.done_reading:
            return None  # the input topic is finite: end the flow (flush, close) here
        batch = read(max_records, timeout)
        if batch is not None and batch.table.num_rows:
            meter.seen(batch.table.num_rows)
        return batch

    runner.source.read = counted  # type: ignore[method-assign]
    m = runner.run()
    meter.report(
        a.stats,
        version=f"tidelake {version('tidelake')} (batch.size {runner.spec.batch.size})",
        records_out=m.records_out,
        batch_size=runner.spec.batch.size,
    )


if __name__ == "__main__":
    main()
