"""tidelake: the pipeline in bench/pipelines/users_w1.yaml, driven by FlowRunner.

Flow w1, w2 or w3 by workload. W3 uses the `window` transform; at the end of the finite input
the runner's finish step emits the windows still open (the verifier drops the partial minute).
"""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path

from bench.common import DEFAULT_KEY, KEY_ENV, Meter, worker_args

PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "users_w1.yaml"


def flow_yaml(text: str, flow: str) -> str:
    """The pipeline file with only `flow` in it: tidelake validates every flow of a file it
    loads, so W1/W2 must not depend on W3's `window` transform being available (and vice
    versa)."""
    import yaml

    raw = yaml.safe_load(text)
    raw["flows"] = {flow: raw["flows"][flow]}
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def load_flow(text: str, flow: str, path: Path):
    from tidelake.config import loads

    return loads(flow_yaml(text, flow), path)


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
    from tidelake.runtime.runner import FlowRunner

    # the pipeline "lives" in the run's scratch dir: its .tidelake state (checkpoints) is fresh
    pipeline = load_flow(
        PIPELINE.read_text(), a.workload.lower(), Path(a.workdir) / "pipeline.yaml"
    )
    pipeline = pipeline.model_copy(update={"base_dir": Path(a.workdir)})
    runner = FlowRunner(pipeline, a.workload.lower())
    meter = Meter(a.records)
    # on the class: the runner builds a fresh source for every attempt (FlowRunner._reset)
    source = type(runner.source)
    read = source.read

    def counted(self, max_records: int, timeout: float):
        if meter.done_reading:
            return None  # the input topic is finite: end the flow (flush, close) here
        batch = read(self, max_records, timeout)
        if batch is not None and batch.table.num_rows:
            meter.seen(batch.table.num_rows)
        return batch

    source.read = counted  # type: ignore[method-assign]
    m = runner.run()
    meter.report(
        a.stats,
        version=f"tidelake {version('tidelake')} (batch.size {runner.spec.batch.size})",
        records_out=m.records_out,
        batch_size=runner.spec.batch.size,
    )


if __name__ == "__main__":
    main()
