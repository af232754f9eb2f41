"""A busy embedded log slows its clients down, never fails them.

Producer and consumer processes share one log while another process keeps taking the
write lock for longer than SQLite's busy wait (as a huge produce, a retention delete or a
backup would). SQLite's own wait is cut to 0.1 s here so that happens within seconds (it is
60 s in production). Every write must retry instead of raising "database is locked": every
process exits cleanly and every record is consumed exactly once.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import orjson

PRODUCERS, RECORDS, PER_WRITE = 6, 300, 5
CONSUMERS = 3
TOPIC = "orders"


def _short_busy_wait() -> None:
    from tidelake import sqlite_wal

    sqlite_wal.BUSY_TIMEOUT_S = 0.1


def _produce(path: str, n: int) -> None:
    _short_busy_wait()
    from tidelake.broker.embedded import EmbeddedBroker

    producer = EmbeddedBroker(path).producer()
    for start in range(0, RECORDS, PER_WRITE):
        values = [orjson.dumps({"p": n, "i": i}) for i in range(start, start + PER_WRITE)]
        producer.produce(TOPIC, values)
    producer.close()


def _consume(path: str, out: str, stop: Event) -> None:
    _short_busy_wait()
    from tidelake.broker.embedded import EmbeddedBroker

    consumer = EmbeddedBroker(path).consumer("g", [TOPIC])
    with open(out, "ab") as seen:
        while not stop.is_set():
            batch = consumer.poll(100, 0.05)
            if len(batch):
                seen.write(b"".join(v + b"\n" for v in batch.values if v))
                seen.flush()  # recorded before committed: a duplicate would show
                consumer.commit(batch.next_offsets())
    consumer.close()


def _hold_lock(path: str, stop: Event) -> None:
    """Hold the write lock 0.6 s at a time, releasing it briefly, until stopped."""
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    while not stop.is_set():
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(0.6)
        conn.execute("COMMIT")
        time.sleep(0.05)
    conn.close()


def test_concurrent_producers_and_consumers_ride_out_lock_contention(tmp_path: Path) -> None:
    from tidelake.broker.embedded import EmbeddedBroker

    path = str(tmp_path / "log.db")
    EmbeddedBroker(path).create_topic(TOPIC, 4)
    ctx = mp.get_context("spawn")
    stop_holding, stop_consuming = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(path, stop_holding))
    outs = [tmp_path / f"consumed{i}" for i in range(CONSUMERS)]
    consumers = [ctx.Process(target=_consume, args=(path, str(o), stop_consuming)) for o in outs]
    producers = [ctx.Process(target=_produce, args=(path, n)) for n in range(PRODUCERS)]
    holder.start()
    for p in consumers + producers:
        p.start()
    for p in producers:
        p.join(120)
    stop_holding.set()
    holder.join(10)

    def consumed() -> list[bytes]:
        return [line for o in outs if o.exists() for line in o.read_bytes().splitlines()]

    deadline = time.monotonic() + 60
    while len(consumed()) < PRODUCERS * RECORDS and time.monotonic() < deadline:
        if not all(c.is_alive() for c in consumers):
            break
        time.sleep(0.1)
    time.sleep(0.5)  # a duplicate would arrive now
    stop_consuming.set()
    for c in consumers:
        c.join(30)
    assert [p.exitcode for p in producers + consumers] == [0] * (PRODUCERS + CONSUMERS)
    records = [orjson.loads(line) for line in consumed()]
    assert sorted((r["p"], r["i"]) for r in records) == [
        (n, i) for n in range(PRODUCERS) for i in range(RECORDS)
    ]
