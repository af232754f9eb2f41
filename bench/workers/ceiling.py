"""The ceiling: plain confluent-kafka, consume -> produce the same bytes, no work at all.

W2: consume -> the raw values as one binary column -> a Parquet file per 100k records.

W3: consume and count only, nothing produced. There is no no-work version of a windowed
aggregate (its output is ~1/7 of a record per input record), so W3's ceiling is simply how
fast Python can read the topic; the harness checks records seen == input count and that the
output topic stayed empty.
"""

from __future__ import annotations

from importlib.metadata import version

import confluent_kafka
from confluent_kafka import Consumer, Producer

from bench.common import CONSUMER_CONFIG, PRODUCER_CONFIG, Meter, worker_args


def main() -> None:
    a = worker_args()
    c = Consumer({**CONSUMER_CONFIG, "bootstrap.servers": a.brokers, "group.id": a.group})
    c.subscribe([a.input])
    m = Meter(a.records)
    if a.workload == "W3":
        while not m.done_reading:
            msgs = c.consume(10_000, 1.0)
            if msgs:
                m.seen(len(msgs))
    elif a.workload == "W1":
        p = Producer({**PRODUCER_CONFIG, "bootstrap.servers": a.brokers})
        produce, poll, out = p.produce, p.poll, a.output
        while not m.done_reading:
            msgs = c.consume(10_000, 1.0)
            if not msgs:
                continue
            m.seen(len(msgs))
            for msg in msgs:
                try:
                    produce(out, msg.value())
                except BufferError:
                    p.poll(0.05)
                    produce(out, msg.value())
            poll(0)
        p.flush()
    else:
        import os

        import pyarrow as pa
        import pyarrow.parquet as pq

        os.makedirs(a.output, exist_ok=True)
        buf: list[bytes] = []
        part = 0

        def write() -> None:
            nonlocal buf, part
            pq.write_table(
                pa.table({"value": pa.array(buf, pa.binary())}),
                f"{a.output}/part-{part:05d}.parquet",
            )
            buf, part = [], part + 1

        while not m.done_reading:
            msgs = c.consume(10_000, 1.0)
            if not msgs:
                continue
            m.seen(len(msgs))
            buf.extend(msg.value() for msg in msgs)
            if len(buf) >= 100_000:
                write()
        if buf:
            write()
    m.report(
        a.stats,
        version=f"confluent-kafka {version('confluent-kafka')} "
        f"(librdkafka {confluent_kafka.libversion()[0]})",
    )
    c.close()


if __name__ == "__main__":
    main()
