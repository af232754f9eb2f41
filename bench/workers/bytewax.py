"""Bytewax: KafkaSource (tail=False) -> filter_map -> KafkaSink (W1) or a Parquet sink (W2)."""

from __future__ import annotations

from importlib.metadata import version

import bytewax.operators as op
import orjson
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from bench.common import CONSUMER_CONFIG, PRODUCER_CONFIG, Meter, make_transform, worker_args


class ParquetPartition(StatelessSinkPartition):
    """Bytewax has no Parquet sink: buffer rows, one pyarrow Parquet file per 100k rows."""

    def __init__(self, directory: str, worker: int) -> None:
        import os

        os.makedirs(directory, exist_ok=True)
        self.directory, self.worker, self.part, self.rows = directory, worker, 0, []

    def write_batch(self, items: list) -> None:
        self.rows.extend(items)
        if len(self.rows) >= 100_000:
            self._write()

    def _write(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.rows:
            pq.write_table(
                pa.Table.from_pylist(self.rows),
                f"{self.directory}/w{self.worker}-{self.part:05d}.parquet",
            )
            self.rows, self.part = [], self.part + 1

    def close(self) -> None:
        self._write()


class ParquetSink(DynamicSink):
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def build(self, step_id: str, worker_index: int, worker_count: int) -> ParquetPartition:
        return ParquetPartition(self.directory, worker_index)


def main() -> None:
    a = worker_args()
    meter = Meter(a.records)
    transform = make_transform()

    def step(msg):
        meter.seen()
        return transform(orjson.loads(msg.value))

    consumer = {
        k: str(v)
        for k, v in CONSUMER_CONFIG.items()
        if k not in ("auto.offset.reset", "enable.auto.commit")
    }
    flow = Dataflow("bench")
    src = op.input(
        "in",
        flow,
        KafkaSource([a.brokers], [a.input], tail=False, add_config=consumer, batch_size=10_000),
    )
    recs = op.filter_map("transform", src, step)
    if a.workload == "W1":
        msgs = op.map("encode", recs, lambda r: KafkaSinkMessage(None, orjson.dumps(r)))
        op.output(
            "out",
            msgs,
            KafkaSink(
                [a.brokers], a.output, add_config={k: str(v) for k, v in PRODUCER_CONFIG.items()}
            ),
        )
    else:
        op.output("out", recs, ParquetSink(a.output))
    run_main(flow)  # one worker in this process; returns when the finite input is exhausted
    meter.report(a.stats, version=f"bytewax {version('bytewax')}")


if __name__ == "__main__":
    main()
