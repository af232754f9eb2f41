"""Bytewax: KafkaSource (tail=False) -> filter_map -> KafkaSink (W1) or a Parquet sink (W2).

W3: KafkaSource -> map (parse, age, event time) -> key_on country -> fold_window (EventClock on
ts, TumblingWindower of 1 minute aligned to 2024-01-01T00:00Z, count + sum of ages) -> KafkaSink.
The EventClock's now_getter is pinned, so the watermark is purely the largest ts seen (zero
lateness): by default bytewax also advances it with the wall clock while no item arrives, so a
fetch pause under load would mark the next, in-order records late. At EOF (tail=False)
bytewax closes every open window, so the last, partial minute is emitted too (the verifier
drops it).
"""

from __future__ import annotations

from importlib.metadata import version

import bytewax.operators as op
import orjson
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from bench.common import (
    CONSUMER_CONFIG,
    PRODUCER_CONFIG,
    W3_ORIGIN,
    W3_WINDOW_S,
    Meter,
    age_of,
    make_transform,
    worker_args,
)


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


def windowed(flow: Dataflow, src, meter: Meter):
    """W3: per country, count and mean age in 1-minute tumbling event-time windows."""
    from datetime import datetime, timedelta

    from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window

    origin = datetime.fromisoformat(W3_ORIGIN)
    length = timedelta(seconds=W3_WINDOW_S)

    def parse(msg):
        meter.seen()
        r = orjson.loads(msg.value)
        return (
            r["location"]["country"],
            datetime.fromisoformat(r["ts"]),
            age_of(r["dob"]["date"]),
        )

    rows = op.map("parse", src, parse)
    keyed = op.key_on("by_country", rows, lambda row: row[0])
    clock = EventClock(
        ts_getter=lambda row: row[1],
        wait_for_system_duration=timedelta(0),
        now_getter=lambda: origin,  # event time only (see the module docstring)
        to_system_utc=lambda _ts: None,  # windows close on later items or EOF, no timers
    )
    windows = fold_window(
        "window",
        keyed,
        clock,
        TumblingWindower(length=length, align_to=origin),
        builder=lambda: [0, 0],
        folder=lambda acc, row: [acc[0] + 1, acc[1] + row[2]],
        merger=lambda x, y: [x[0] + y[0], x[1] + y[1]],
        ordered=False,  # count and sum do not depend on order
    )
    origin_s = int(origin.timestamp())

    def encode(item):
        country, (window_id, (n, total)) = item
        # TumblingWindower: window id k opens at align_to + k * length
        return KafkaSinkMessage(
            None,
            orjson.dumps(
                {
                    "window_start": origin_s + window_id * W3_WINDOW_S,
                    "country": country,
                    "count": n,
                    "avg_age": total / n,
                }
            ),
        )

    return op.map("encode", windows.down, encode)


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
    if a.workload == "W3":
        op.output(
            "out",
            windowed(flow, src, meter),
            KafkaSink(
                [a.brokers], a.output, add_config={k: str(v) for k, v in PRODUCER_CONFIG.items()}
            ),
        )
        run_main(flow)
        meter.report(a.stats, version=f"bytewax {version('bytewax')}")
        return
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
