"""``tidelake dlq list|show|redrive`` on the embedded log and on Kafka: a flow dead-letters
the orders whose quantity is not a number; the letters are counted, shown with reason, origin
and payload, fixed by SQL and redriven into the flow's input; the flow then lands each once,
and a second redrive lands nothing; a redrive whose SQL fails consumes nothing. A redrive
killed midway and run again lands each once."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from tidelake.broker import Broker, connect
from tidelake.cli import app
from tidelake.config import load
from tidelake.runtime import dead_letters
from tidelake.runtime.runner import FlowRunner

ORDERS = 1000
BAD = [i for i in range(ORDERS) if i % 10 == 0]  # quantity "two"

PIPELINE = """\
name: {name}
broker: {broker}
database: sqlite:///out.db
flows:
  land:
    source: {{type: topic, topic: {topic}}}
    transforms:
      - {{type: validate, rules: [{{column: quantity, type: int}}]}}
      - type: sql
        query: "SELECT order_id, CAST(quantity AS BIGINT) * unit_price AS amount FROM batch"
    sink: {{type: table, table: amounts, mode: upsert, key: [order_id]}}
    batch: {{size: 400, max_latency: 0.2}}
"""

cli = CliRunner()


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.integration)])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "embedded":
        return f"embedded:///{tmp_path}/log.db"
    return str(request.getfixturevalue("kafka_url"))


def _pipeline(tmp_path: Path, broker_url: str) -> tuple[Path, str]:
    unique = uuid.uuid4().hex[:8]
    topic = f"orders_{unique}"
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(name=f"dlq_{unique}", broker=broker_url, topic=topic))
    return path, topic


def _landed(tmp_path: Path) -> list[tuple[int, float]]:
    try:
        with sqlite3.connect(tmp_path / "out.db") as c:
            return c.execute("SELECT order_id, amount FROM amounts ORDER BY order_id").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def _run_until(path: Path, rows: int, timeout: float = 120) -> None:
    stop = threading.Event()
    runner = FlowRunner(load(path), "land", stop)
    t = threading.Thread(target=runner.run)
    t.start()
    deadline = time.monotonic() + timeout
    while len(_landed(path.parent)) < rows and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.1)
    time.sleep(0.5)  # a duplicate would land now
    stop.set()
    t.join(60)
    assert len(_landed(path.parent)) == rows


def _ends(broker: Broker, topic: str) -> dict[int, int]:
    return broker.end_offsets(topic)


def _cli(*args: str) -> str:
    result = cli.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_fix_and_redrive_lands_once(tmp_path: Path, broker_url: str) -> None:
    path, topic = _pipeline(tmp_path, broker_url)
    broker = connect(broker_url)
    broker.create_topic(topic, 2)
    producer = broker.producer()
    orders = [
        {"order_id": i, "quantity": "two" if i in BAD else i % 7 + 1, "unit_price": 0.5}
        for i in range(ORDERS)
    ]
    producer.produce(topic, [orjson.dumps(o) for o in orders])
    producer.flush()
    _run_until(path, ORDERS - len(BAD))

    listed = _cli("dlq", "list", str(path), "land")
    assert f"{len(BAD)} dead letters" in listed and "quantity" in listed

    shown = _cli("dlq", "show", str(path), "land", "--format", "json").splitlines()
    letters = [orjson.loads(line) for line in shown]
    assert sorted(d["payload"]["order_id"] for d in letters) == BAD
    for d in letters:
        assert d["flow"] == "land" and "quantity" in d["reason"], d
        assert d["payload"]["quantity"] == "two" and "_offset" not in d["payload"], d
        assert d["origin"]["topic"] == topic, d
    origins = {(d["origin"]["partition"], d["origin"]["offset"]) for d in letters}
    assert len(origins) == len(BAD)
    consumer = broker.consumer(f"check_{uuid.uuid4().hex[:8]}", [topic])
    read: dict[tuple[int, int], int] = {}
    while len(read) < ORDERS:
        batch = consumer.poll(ORDERS, 1.0)
        for p, o, v in zip(batch.partitions, batch.offsets, batch.values, strict=True):
            read[(p, o)] = orjson.loads(v)["order_id"]  # type: ignore[arg-type]
    consumer.close()
    assert {read[o] for o in origins} == set(BAD), "each origin is where its record was read"

    ends = _ends(broker, topic)
    broken = cli.invoke(
        app, ["dlq", "redrive", str(path), "land", "--sql", "SELECT nope FROM batch"]
    )
    assert broken.exit_code != 0 and "nope" in broken.output
    assert _ends(broker, topic) == ends, "a failed redrive writes nothing and consumes nothing"

    fix = "SELECT * REPLACE (2 AS quantity) FROM batch"
    assert f"redriven: {len(BAD)} dead letters" in _cli(
        "dlq", "redrive", str(path), "land", "--sql", fix
    )
    _run_until(path, ORDERS)
    landed = dict(_landed(tmp_path))
    assert all(landed[i] == 1.0 for i in BAD)  # 2 * 0.5: the fix applied

    ends = _ends(broker, topic)
    assert "redriven: 0 dead letters" in _cli("dlq", "redrive", str(path), "land", "--sql", fix)
    assert _ends(broker, topic) == ends, "a second redrive writes nothing"
    broker.close()


def test_redrive_killed_midway_lands_each_once(tmp_path: Path) -> None:
    path, topic = _pipeline(tmp_path, f"embedded:///{tmp_path}/log.db")
    name = load(path).name
    broker = connect(f"embedded:///{tmp_path}/log.db")
    letters = 20_000
    producer = broker.producer()
    producer.produce(
        f"{name}.land.dlq",
        [
            orjson.dumps(
                {
                    "flow": "land",
                    "reason": "test",
                    "origin": {"topic": topic, "partition": 0, "offset": i},
                    "payload": {"order_id": i, "quantity": 1, "unit_price": 1.0},
                }
            )
            for i in range(letters)
        ],
    )
    redrive = [sys.executable, "-m", "tidelake.cli", "dlq", "redrive", str(path), "land"]
    proc = subprocess.Popen([*redrive, "--batch-size", "100"], stderr=subprocess.PIPE)
    while not sum(_ends(broker, topic).values()) and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    midway = sum(_ends(broker, topic).values())
    assert 0 < midway < letters, "killed after some batches, before the last"

    assert f"redriven: {letters - midway:,} dead letters" in _cli(
        "dlq", "redrive", str(path), "land"
    )
    consumer = broker.consumer("check", [topic])
    ids: list[int] = []
    while True:
        batch = consumer.poll(letters, 0.5)
        if not len(batch):
            break
        ids += [orjson.loads(v)["order_id"] for v in batch.values]  # type: ignore[arg-type]
    consumer.close()
    assert sorted(ids) == list(range(letters))
    assert "redriven: 0 dead letters" in _cli("dlq", "redrive", str(path), "land")
    broker.close()


def test_dead_letters_source_in_a_pipeline_file(tmp_path: Path) -> None:
    path, topic = _pipeline(tmp_path, f"embedded:///{tmp_path}/log.db")
    text = path.read_text() + (
        "  retry:\n"
        "    source: {type: dead_letters, flow: land, until_end: true}\n"
        f"    sink: {{type: topic, topic: {topic}}}\n"
    )
    path.write_text(text)
    pipeline = load(path)
    broker = connect(f"embedded:///{tmp_path}/log.db")
    producer = broker.producer()
    letter = {"flow": "land", "reason": "r", "origin": None}
    seven = letter | {"origin": {"topic": topic, "partition": 0, "offset": 7}}
    producer.produce(
        f"{pipeline.name}.land.dlq",
        [
            orjson.dumps(seven | {"payload": {"order_id": 1}}),
            b"not a letter",
            orjson.dumps(seven | {"payload": {"order_id": 1}}),  # repeated by a crash
            orjson.dumps(seven | {"payload": {"order_id": 3}}),  # another row of record 7
            orjson.dumps(letter | {"payload": {"order_id": 2}}),
        ],
    )
    metrics = FlowRunner(pipeline, "retry").run()  # until_end: it ends by itself
    assert metrics.state == "finished" and metrics.records_out == 3
    consumer = broker.consumer("check", [topic])
    batch = consumer.poll(10, 2.0)
    consumer.close()
    assert [orjson.loads(v)["order_id"] for v in batch.values] == [1, 3, 2]  # type: ignore[arg-type]
    again = [d.value for d in dead_letters.read(broker, f"{pipeline.name}.retry.dlq")]
    assert [d["payload"] for d in again] == [{"raw": "not a letter"}], "nothing is lost"
    broker.close()
