"""faust-streaming: an agent over the input topic (raw bytes, orjson), sending to the output
topic (W1) or buffering rows into Parquet files of 100k (W2; faust has no file sinks).

faust has no "stop at N" switch: when the N-th record is processed the agent flushes the
producer (W1) or writes the last file (W2), writes the stats and exits the process.
"""

from __future__ import annotations

import os
from importlib.metadata import version

import faust
import orjson

from bench.common import Meter, make_transform, worker_args


def main() -> None:
    a = worker_args()
    meter = Meter(a.records)
    transform = make_transform()
    app = faust.App(
        a.group.replace(".", "-"),
        broker=f"kafka://{a.brokers}",
        store="memory://",
        datadir=f"{a.workdir}/faust",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_partitions=1,
        topic_replication_factor=1,
        producer_linger_ms=5,
        producer_compression_type=os.environ.get("BENCH_FAUST_COMPRESSION", "lz4") or None,
        producer_acks=-1,
        stream_buffer_maxsize=65536,
    )
    inp = app.topic(a.input, value_serializer="raw", key_serializer="raw")
    out = app.topic(a.output, value_serializer="raw", key_serializer="raw")
    rows: list[dict] = []
    part = 0

    def write_parquet() -> None:
        nonlocal rows, part
        import pyarrow as pa
        import pyarrow.parquet as pq

        if rows:
            os.makedirs(a.output, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), f"{a.output}/part-{part:05d}.parquet")
            rows, part = [], part + 1

    @app.agent(inp)
    async def process(stream):
        async for value in stream:
            meter.seen()
            rec = transform(orjson.loads(value))
            if rec is not None:
                if a.workload == "W1":
                    await out.send(value=orjson.dumps(rec))
                else:
                    rows.append(rec)
                    if len(rows) >= 100_000:
                        write_parquet()
            if meter.done_reading:
                if a.workload == "W1":
                    await app.producer.flush()
                else:
                    write_parquet()
                meter.report(a.stats, version=f"faust-streaming {version('faust-streaming')}")
                os._exit(0)

    import sys

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
