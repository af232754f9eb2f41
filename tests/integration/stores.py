"""Shared by the store sink tests (Cassandra, MongoDB, MySQL): a keyed stream produced live
while ``tidelake run`` is killed -9 and restarted, and its reference final state."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import killing
import orjson

from tidelake.broker import connect

RECORDS = 4000
KEYS = 1500
KILLS = 5

PIPELINE = """\
name: st_{unique}
broker: {broker}
database: sqlite:///{tmp}/state.db
flows:
  land:
    source: {{type: topic, topic: {topic}}}
    sink: {sink}
    batch: {{size: 100, max_latency: 0.2}}
"""


def record(i: int) -> dict[str, object]:
    """Record ``i`` updates key ``i % KEYS``; the last record of a key is its final state."""
    return {"id": i % KEYS, "seq": i, "name": f"user {i}", "score": (i * 7) % 101 / 4}


def reference() -> dict[int, int]:
    """id -> seq of its last record."""
    return {i % KEYS: i for i in range(RECORDS)}


def produce_live(broker_url: str, topic: str, seconds: float = 12.0) -> threading.Thread:
    """Produce RECORDS keyed records over about ``seconds`` in a thread (started, to join)."""
    broker = connect(broker_url)
    broker.create_topic(topic, 3)

    def run() -> None:
        producer = broker.producer()
        step = 100
        for start in range(0, RECORDS, step):
            rows = [record(i) for i in range(start, start + step)]
            producer.produce(
                topic, [orjson.dumps(r) for r in rows], [str(r["id"]).encode() for r in rows]
            )
            producer.flush()
            time.sleep(seconds * step / RECORDS)
        producer.close()
        broker.close()

    thread = threading.Thread(target=run, name="produce_live", daemon=True)
    thread.start()
    return thread


def kill_while_streaming(
    tmp_path: Path, unique: str, sink_yaml: str, positions: Callable[[], int]
) -> list[int]:
    """Run the topic -> sink flow under kill -9 while records arrive, then to the end.

    ``positions()`` is the sum of the positions the sink stored (RECORDS when done).
    Requires at least 3 of the kills to land mid-stream (a loaded machine may finish early)."""
    broker_url, topic = f"embedded:///{tmp_path}/log.db", f"in_{unique}"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        PIPELINE.format(unique=unique, broker=broker_url, tmp=tmp_path, topic=topic, sink=sink_yaml)
    )
    producer = produce_live(broker_url, topic)
    rng = random.Random(unique)
    seen = killing.kill_repeatedly(
        lambda: killing.start(pipeline), positions, RECORDS, KILLS, rng, pause=(0.3, 1.2)
    )
    producer.join()
    killing.run_to_target(
        lambda: killing.start(pipeline),
        positions,
        RECORDS,
        ready=killing.flow_running(tmp_path / ".tidelake", "land"),
    )
    assert sum(n < RECORDS for n in seen) >= 3, f"too few kills mid-stream: {seen}"
    return seen
