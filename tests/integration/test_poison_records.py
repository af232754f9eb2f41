"""Poison records mixed into a 200,000-record stream at 0.5%: every valid record lands once
in a SQL table and in the lake, every poison record is a dead letter with a reason, and no
flow stops. The same for a CSV file with badly typed values."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson
import pytest

from tidelake.broker import connect
from tidelake.config import loads
from tidelake.lake.query import QueryEngine
from tidelake.runtime import dead_letters
from tidelake.runtime.runner import run_flows

RECORDS = 200_000
POISON_EVERY = 200  # 0.5%
POISON = [
    b'{"id": %d, "amount": "lots", "name": "n"}',  # text in a numeric field
    b'{"id": %d, "amount": 99999999999999999999999, "name": "n"}',  # beyond int64
    b'{"id": %d, "amount": NaN, "name": "n"}',
    b'{"id": %d, "amount": {"nested": 1}, "name": "n"}',  # nested where flat is expected
    b'{"id": %d, "amount": 1, "name": "\xff\xfe bad utf-8"}',
    b'{"id": %d, "amount": 1, "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"null",
    b'{"id": %d, "amount": 1, "name": "n", ',  # truncated
    b'{"id": "id-%d", "amount": 1, "name": "n"}',  # text where the id is a number
]

PIPELINE = """\
name: poison
database: sqlite:///out.db
flows:
  to_table:
    source: {type: topic, topic: events}
    transforms:
      - {type: sql, query: "SELECT id, amount * 2 AS doubled, name FROM batch"}
    sink: {type: table, table: events}
    batch: {size: 20000, max_latency: 0.3}
  to_lake:
    source: {type: topic, topic: events}
    transforms:
      - {type: sql, query: "SELECT id, amount * 2 AS doubled, name FROM batch"}
    sink: {type: lake, table: events}
    batch: {size: 20000, max_latency: 0.3}
  csv:
    source: {type: file, path: data/orders.csv}
    sink: {type: table, table: orders}
"""


HUGE = b'{"id": %d, "amount": 1, "name": "' + b"x" * 6_000_000 + b'"}'  # once: a 6 MB record


def _record(i: int) -> bytes:
    if i == POISON_EVERY - 1:
        return HUGE % i
    if i % POISON_EVERY == POISON_EVERY - 1:
        template = POISON[(i // POISON_EVERY) % len(POISON)]
        return template % i if b"%d" in template else template
    return orjson.dumps({"id": i, "amount": i % 97, "name": f"user {i}"})


def _produce(pipeline_dir: Path) -> None:
    broker = connect(f"embedded://{pipeline_dir}/.tidelake/log.db")
    broker.create_topic("events", 2)
    producer = broker.producer()
    for start in range(0, RECORDS, 20_000):
        producer.produce("events", [_record(i) for i in range(start, start + 20_000)])
    producer.flush()
    producer.close()
    broker.close()


def _csv(pipeline_dir: Path) -> tuple[int, int]:
    (pipeline_dir / "data").mkdir()
    lines, bad = ["order_id,quantity,price"], 0
    for i in range(5000):
        if i % 100 == 7:
            lines.append(f"{i},{['two', '1e999x', 'NaN?', ''][i % 4]}x,{i}.5")
            bad += 1
        else:
            lines.append(f"{i},{i % 9},{i}.5")
    (pipeline_dir / "data" / "orders.csv").write_text("\n".join(lines) + "\n")
    return 5000 - bad, bad


def _dead_letters(pipeline_dir: Path, topic: str) -> list[dict]:
    broker = connect(f"embedded://{pipeline_dir}/.tidelake/log.db")
    consumer = broker.consumer(f"check-{topic}", [topic])
    out: list[dict] = []
    while batch := consumer.poll(10_000, 1.0).values:
        out.extend(orjson.loads(v) for v in batch)
    consumer.close()
    broker.close()
    return out


@pytest.mark.integration
def test_poison_records_are_dead_letters_and_every_valid_record_lands_once(
    tmp_path: Path,
) -> None:
    _produce(tmp_path)
    csv_valid, csv_bad = _csv(tmp_path)
    valid = [i for i in range(RECORDS) if i % POISON_EVERY != POISON_EVERY - 1]
    pipeline = loads(PIPELINE, tmp_path / "p.yaml")
    stop = threading.Event()
    result: list = []
    t = threading.Thread(
        target=lambda: result.extend(run_flows(pipeline, list(pipeline.flows), stop))
    )
    t.start()
    engine = QueryEngine(pipeline)
    try:
        for _ in range(240):
            with sqlite3.connect(tmp_path / "out.db", timeout=30) as c:
                try:
                    n = c.execute("SELECT count(*) FROM events").fetchone()[0]
                except sqlite3.OperationalError:
                    n = 0
            if n >= len(valid):
                try:
                    if engine.sql("SELECT count(*) FROM lake.events").column(0)[0].as_py() >= len(
                        valid
                    ):
                        break
                except Exception:
                    pass
            t.join(1.0)
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive()
    states = {r.name: r.metrics.state for r in result}
    assert states == {"to_table": "stopped", "to_lake": "stopped", "csv": "finished"}

    with sqlite3.connect(tmp_path / "out.db") as c:
        assert c.execute("SELECT count(*), count(DISTINCT id), sum(id) FROM events").fetchone() == (
            len(valid),
            len(valid),
            sum(valid),
        )
        assert c.execute("SELECT count(*), count(DISTINCT order_id) FROM orders").fetchone() == (
            csv_valid,
            csv_valid,
        )
    lake = engine.sql("SELECT count(*), count(DISTINCT id), sum(id) FROM lake.events")
    assert [c[0].as_py() for c in lake.columns] == [len(valid), len(valid), sum(valid)]

    poison = RECORDS // POISON_EVERY
    for flow in ("to_table", "to_lake"):
        letters = _dead_letters(tmp_path, f"poison.{flow}.dlq")
        assert len(letters) == poison, flow
        assert all(letter["reason"] for letter in letters)
        (huge,) = [x for x in letters if "truncated" in x["payload"]]
        assert huge["payload"]["truncated"]["bytes"] > 6_000_000, flow
        assert huge["payload"]["truncated"]["head"].startswith('{"id":199,"amount":1'), flow
    csv_letters = _dead_letters(tmp_path, "poison.csv.dlq")
    assert len(csv_letters) == csv_bad
    assert all("'quantity'" in letter["reason"] for letter in csv_letters)


@pytest.mark.integration
def test_a_record_too_large_for_kafka_is_a_truncated_dead_letter(
    tmp_path: Path, kafka_url: str, unique: str
) -> None:
    """Kafka refuses messages over ~1 MB, so a letter quoting a 3 MB record in full could
    never be written and would stop the flow: it keeps the start of the payload instead."""
    lines = [orjson.dumps({"id": i, "name": f"n{i}"}) for i in range(1000)]
    lines[500] = b'{"id": 500, "name": "' + b"y" * 3_000_000 + b'"}'
    (tmp_path / "people.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    pipeline = loads(
        f"""\
name: big{unique}
broker: {kafka_url}
database: sqlite:///out.db
flows:
  load:
    source: {{type: file, path: people.jsonl}}
    sink: {{type: table, table: people}}
""",
        tmp_path / "p.yaml",
    )
    (runner,) = run_flows(pipeline, ["load"], threading.Event())
    assert runner.metrics.state == "finished"
    with sqlite3.connect(tmp_path / "out.db") as c:
        assert c.execute("SELECT count(*), sum(id) FROM people").fetchone() == (
            999,
            sum(range(1000)) - 500,
        )
    broker = connect(kafka_url)
    try:
        (letter,) = dead_letters.read(broker, f"big{unique}.load.dlq")
    finally:
        broker.close()
    assert "bytes" in letter.reason
    truncated = letter.value["payload"]["truncated"]
    assert truncated["bytes"] > 3_000_000 and len(truncated["head"]) == dead_letters.HEAD_CHARS
