"""A topic -> table flow on the embedded log and SQLite, in-process."""

import sqlite3
import threading
from pathlib import Path

import orjson
import pytest

from tidelake.broker.embedded import EmbeddedBroker
from tidelake.config import loads
from tidelake.runtime.runner import FlowFailed, FlowRunner

PIPELINE = """\
name: t
broker: embedded
database: sqlite:///out.db
flows:
  land:
    source: {type: topic, topic: events}
    sink: {type: table, table: events}
    batch: {size: 1000, max_latency: 0.2}
"""


def _produce(path: Path, n: int, start: int = 0) -> None:
    broker = EmbeddedBroker(str(path / ".tidelake" / "log.db"))
    broker.create_topic("events", 2)
    prod = broker.producer()
    values = [orjson.dumps({"id": i, "name": f"user{i}"}) for i in range(start, start + n)]
    prod.produce("events", values, [str(i).encode() for i in range(start, start + n)])
    prod.close()


def _run_until(pipeline_dir: Path, rows: int) -> None:
    p = loads(PIPELINE, pipeline_dir / "p.yaml")
    stop = threading.Event()
    runner = FlowRunner(p, "land", stop)
    t = threading.Thread(target=runner.run)
    t.start()
    db = pipeline_dir / "out.db"
    for _ in range(200):
        if db.exists():
            with sqlite3.connect(db) as c:
                try:
                    if c.execute("SELECT count(*) FROM events").fetchone()[0] >= rows:
                        break
                except sqlite3.OperationalError:
                    pass
        stop.wait(0.05)
    stop.set()
    t.join(10)
    assert not t.is_alive()


def test_lands_rows_with_provenance_and_resumes(tmp_path: Path) -> None:
    _produce(tmp_path, 3000)
    _run_until(tmp_path, 3000)
    _produce(tmp_path, 2000, start=3000)
    _run_until(tmp_path, 5000)
    with sqlite3.connect(tmp_path / "out.db") as c:
        assert c.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone() == (
            5000,
            5000,
        )
        parts = c.execute(
            "SELECT _partition, min(_offset), max(_offset), count(*) FROM events GROUP BY 1"
        )
        for _, lo, hi, n in parts:
            assert lo == 0 and hi == n - 1
        stored = dict(
            c.execute(
                "SELECT position, next_offset FROM _tidelake_checkpoints"
                " WHERE position NOT LIKE '%#epoch'"
            )
        )
    assert sum(stored.values()) == 5000
    assert set(stored) == {"events/0", "events/1"}


@pytest.mark.parametrize("topic", ["events", "'{_topic}'"])
def test_a_topic_sink_never_writes_rows_back_to_their_own_topic(tmp_path: Path, topic: str) -> None:
    _produce(tmp_path, 10)
    loop = PIPELINE.replace(
        "sink: {type: table, table: events}", f"sink: {{type: topic, topic: {topic}}}"
    )
    stop = threading.Event()
    runner = FlowRunner(loads(loop, tmp_path / "p.yaml"), "land", stop)
    timer = threading.Timer(10, stop.set)  # a loop would run until stopped
    timer.start()
    with pytest.raises(FlowFailed, match="back into 'events', the topic they were read from"):
        runner.run()
    timer.cancel()
    broker = EmbeddedBroker(str(tmp_path / ".tidelake" / "log.db"))
    assert sum(broker.end_offsets("events").values()) == 10, "nothing written back"


def test_malformed_records_go_to_dead_letter_topic(tmp_path: Path) -> None:
    broker = EmbeddedBroker(str(tmp_path / ".tidelake" / "log.db"))
    prod = broker.producer()
    prod.produce("events", [b'{"id": 1}', b"not json", b'{"id": 2}', b"[1, 2]"])
    _run_until(tmp_path, 2)
    with sqlite3.connect(tmp_path / "out.db") as c:
        assert c.execute("SELECT id FROM events ORDER BY id").fetchall() == [(1,), (2,)]
    dlq = broker.consumer("check", ["t.land.dlq"]).poll(10, 2.0)
    reasons = [orjson.loads(v)["reason"] for v in dlq.values]
    assert len(reasons) == 2
    assert reasons[0].startswith("invalid JSON") and "expected a JSON object" in reasons[1]
    letter = orjson.loads(dlq.values[0])
    assert letter["payload"] == {"raw": "not json"}
    assert letter["origin"] == {"topic": "events", "partition": 0, "offset": 1}


def test_reads_with_conflicting_types_concatenate_as_text() -> None:
    import datetime

    import pyarrow as pa

    from tidelake.runtime.runner import _concat

    first = pa.table({"ts": pa.array([datetime.datetime(2024, 1, 1)], pa.timestamp("s"))})
    second = pa.table({"ts": ["not a time"]})
    out = _concat([first, second])
    assert out.column("ts").to_pylist() == ["2024-01-01 00:00:00", "not a time"]
