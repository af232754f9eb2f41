"""Shared by the store sink tests (Cassandra, MongoDB, MySQL): a keyed stream produced live
while ``tidelake run`` is killed -9 and restarted, and its reference final state."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path

import killing
import orjson

from tidelake.broker import connect

RECORDS = 4000
KEYS = 1500
KILLS = 5
#: the stream's pace: RECORDS over this many seconds, the rest at once when the kills end
STREAM_SECONDS = 120.0

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


def produce_live(broker_url: str, topic: str, until: threading.Event) -> threading.Thread:
    """Produce RECORDS keyed records in a thread (started, to join): paced over
    STREAM_SECONDS until ``until`` is set, then the rest at once."""
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
            until.wait(STREAM_SECONDS * step / RECORDS)
        producer.close()
        broker.close()

    thread = threading.Thread(target=run, name="produce_live", daemon=True)
    thread.start()
    return thread


def kill_while_streaming(
    tmp_path: Path,
    unique: str,
    sink_yaml: str,
    positions: Callable[[], int],
    kills: int = KILLS,
) -> list[int]:
    """Run the topic -> sink flow under ``kills`` kill -9 while records arrive, then to the end.

    ``positions()`` is the sum of the positions the sink stored (RECORDS when done). Every
    kill lands mid-stream: after the restarted flow stored new positions, while the producer
    is still producing."""
    broker_url, topic = f"embedded:///{tmp_path}/log.db", f"in_{unique}"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        PIPELINE.format(unique=unique, broker=broker_url, tmp=tmp_path, topic=topic, sink=sink_yaml)
    )
    kills_over = threading.Event()
    producer = produce_live(broker_url, topic, kills_over)
    rng = random.Random(unique)
    try:
        seen = killing.kill_repeatedly(
            lambda: killing.start(pipeline), positions, RECORDS, kills, rng, pause=(0.3, 1.2)
        )
        streaming = producer.is_alive()
    finally:
        kills_over.set()
    producer.join()
    assert streaming and len(seen) == kills, f"kills not all mid-stream: {seen}"
    killing.run_to_target(
        lambda: killing.start(pipeline),
        positions,
        RECORDS,
        ready=killing.flow_running(tmp_path / ".tidelake", "land"),
    )
    return seen
