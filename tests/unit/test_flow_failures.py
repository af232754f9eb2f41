"""A badly typed value is a dead letter, a pipeline bug stops only its flow, and a failed
flow moves no position: after the fix, a restart lands every record once."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from tidelake.broker.embedded import EmbeddedBroker
from tidelake.config import Pipeline, loads
from tidelake.runtime.runner import FlowRunner, failed, run_flows
from tidelake.serve.api import create_app

ORDERS = """\
order_id,product,quantity,unit_price
1,apple,2,1.5
2,pear,two,2.0
3,plum,1,3.0
4,fig,5,0.5
"""

PIPELINE = """\
name: shop
database: sqlite:///shop.db
flows:
  orders_file:
    source: {{type: file, path: data/orders.csv}}
    sink: {{type: topic, topic: orders}}
  orders_land:
    source: {{type: topic, topic: orders}}
    transforms:
      - {{type: sql, query: "SELECT order_id, product, {amount} AS amount FROM batch"}}
    sink: {{type: table, table: amounts, mode: upsert, key: [order_id]}}
    batch: {{size: 100, max_latency: 0.2}}
"""


def _pipeline(tmp_path: Path, amount: str = "quantity * unit_price"):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "orders.csv").write_text(ORDERS)
    return loads(PIPELINE.format(amount=amount), tmp_path / "p.yaml")


def _amounts(tmp_path: Path) -> dict[int, float]:
    db = tmp_path / "shop.db"
    if not db.exists():
        return {}
    with sqlite3.connect(db) as c:
        try:
            return dict(c.execute("SELECT order_id, amount FROM amounts"))
        except sqlite3.OperationalError:
            return {}


def _run(tmp_path: Path, names: list[str], until_rows: int | None, **kw: str):
    """Run flows until the table holds ``until_rows`` (or until they all end by themselves)."""
    stop = threading.Event()
    result: list = []
    t = threading.Thread(
        target=lambda: result.extend(run_flows(_pipeline(tmp_path, **kw), names, stop))
    )
    t.start()
    for _ in range(300):
        if not t.is_alive() or (until_rows is not None and len(_amounts(tmp_path)) >= until_rows):
            break
        t.join(0.05)
    stop.set()
    t.join(30)
    assert not t.is_alive()
    return result


def _run_until_out(pipeline: Pipeline, rows: int) -> FlowRunner:
    """Run the flow ``land`` until it landed ``rows`` rows (or 10 s passed), then stop it."""
    runner = FlowRunner(pipeline, "land", threading.Event())
    t = threading.Thread(target=runner.run)
    t.start()
    for _ in range(200):
        if runner.metrics.records_out >= rows:
            break
        t.join(0.05)
    runner.stop.set()
    t.join(30)
    assert not t.is_alive()
    return runner


def _dead_letters(tmp_path: Path, topic: str) -> list[dict]:
    broker = EmbeddedBroker(str(tmp_path / ".tidelake" / "log.db"))
    consumer = broker.consumer("check", [topic])
    values = [orjson.loads(v) for v in consumer.poll(1000, 2.0).values]
    consumer.close()
    broker.close()
    return values


def test_a_badly_typed_value_is_a_dead_letter_and_the_rest_of_its_batch_lands(
    tmp_path: Path,
) -> None:
    runners = _run(tmp_path, ["orders_file", "orders_land"], until_rows=3)
    assert _amounts(tmp_path) == {1: 3.0, 3: 3.0, 4: 2.5}
    assert not failed(runners)
    (letter,) = _dead_letters(tmp_path, "shop.orders_file.dlq")
    assert letter["reason"] == "column 'quantity': 'two' is not a valid int64"
    assert letter["payload"]["order_id"] == "2"  # the record as it came, to fix and redrive


def test_a_pipeline_bug_stops_its_flow_only_and_moves_no_position(tmp_path: Path) -> None:
    runners = _run(tmp_path, ["orders_file", "orders_land"], None, amount="no_such_column")
    state = {r.name: r.metrics for r in runners}
    assert state["orders_file"].state == "finished"  # its sibling went on and finished
    assert state["orders_land"].state == "failed"
    assert "no_such_column" in state["orders_land"].last_error
    assert _amounts(tmp_path) == {}
    with TestClient(create_app(_pipeline(tmp_path))) as api:  # what an operator sees
        shown = {f["flow"]: f for f in api.get("/api/flows").json()}
    assert shown["orders_land"]["state"] == "failed"
    assert "no_such_column" in shown["orders_land"]["last_error"]
    assert shown["orders_file"]["state"] == "finished"

    runners = _run(tmp_path, ["orders_land"], until_rows=3)  # after the fix
    assert _amounts(tmp_path) == {1: 3.0, 3: 3.0, 4: 2.5}
    assert not failed(runners)


def test_on_failure_stop_all_stops_every_flow(tmp_path: Path) -> None:
    _pipeline(tmp_path)
    text = PIPELINE.format(amount="no_such_column") + (
        "  orders_copy:\n"  # runs until stopped
        "    source: {type: topic, topic: orders}\n"
        "    sink: {type: table, table: copies}\n"
        "on_failure: stop-all\n"
    )
    pipeline, stop, result = loads(text, tmp_path / "p.yaml"), threading.Event(), []
    t = threading.Thread(
        target=lambda: result.extend(run_flows(pipeline, list(pipeline.flows), stop))
    )
    t.start()
    t.join(60)
    ended = not t.is_alive()
    stop.set()
    t.join(30)
    assert ended, "the other flows ran on after orders_land failed"
    state = {r.name: r.metrics.state for r in result}
    assert state["orders_land"] == "failed" and state["orders_copy"] == "stopped"


TWIN = """\
name: {name}
broker: embedded:///{log}
database: sqlite:///{db}
lake: file://{lake}
flows:
  land:
    source: {{type: topic, topic: events}}
    sink: {{type: {sink}, table: {table}}}
    batch: {{size: 500, max_latency: 0.2}}
"""


def test_same_named_flows_of_two_pipelines_keep_their_own_positions(tmp_path: Path) -> None:
    """Two pipelines, each with a flow ``land`` reading topic ``events`` of one log, share
    one database and one lake: each lands all of the topic's records."""
    from tidelake.lake.query import QueryEngine

    log, db, lake = tmp_path / "log.db", tmp_path / "shared.db", tmp_path / "lake"
    broker = EmbeddedBroker(str(log))
    producer = broker.producer()
    producer.produce("events", [orjson.dumps({"id": i}) for i in range(1000)])
    producer.close()
    broker.close()
    for sink in ("table", "lake"):
        for name in ("first", "second"):
            home = tmp_path / f"{name}_{sink}"
            table = f"{name}_{sink}"  # also the pipeline's name: one pair of pipelines a sink
            text = TWIN.format(name=table, log=log, db=db, lake=lake, sink=sink, table=table)
            runner = _run_until_out(loads(text, home / "p.yaml"), 1000)
            assert runner.metrics.records_out == 1000, (sink, name)
    with sqlite3.connect(db) as c:
        for name in ("first", "second"):
            assert c.execute(f"SELECT count(*) FROM {name}_table").fetchone() == (1000,)
    for name in ("first", "second"):
        table = f"{name}_lake"
        text = TWIN.format(name=table, log=log, db=db, lake=lake, sink="lake", table=table)
        engine = QueryEngine(loads(text, tmp_path / f"{name}_lake" / "p.yaml"))
        assert engine.sql(f"SELECT count(*) FROM lake.{name}_lake").column(0)[0].as_py() == 1000


def test_rows_a_transform_fails_on_are_found_by_bisection_and_dead_lettered(
    tmp_path: Path,
) -> None:
    text = """\
name: bisect
flows:
  land:
    source: {type: topic, topic: codes}
    transforms:
      - {type: sql, query: "SELECT id, CAST(code AS INTEGER) AS code FROM batch"}
    sink: {type: table, table: codes}
    batch: {size: 1000, max_latency: 0.2}
"""
    broker = EmbeddedBroker(str(tmp_path / ".tidelake" / "log.db"))
    producer = broker.producer()
    codes = ["x" if i in (3, 500, 501, 998) else str(i) for i in range(1000)]
    producer.produce("codes", [orjson.dumps({"id": i, "code": c}) for i, c in enumerate(codes)])
    producer.close()
    broker.close()
    _run_until_out(loads(text, tmp_path / "p.yaml"), 996)
    with sqlite3.connect(tmp_path / ".tidelake" / "pipeline.db") as c:
        ids = [r[0] for r in c.execute("SELECT id FROM codes ORDER BY id")]
    assert ids == [i for i in range(1000) if i not in (3, 500, 501, 998)]
    letters = _dead_letters(tmp_path, "bisect.land.dlq")
    assert sorted(letter["payload"]["id"] for letter in letters) == [3, 500, 501, 998]
    assert all(
        letter["reason"].startswith("transform sql failed on this row:")
        and "'x'" in letter["reason"]
        for letter in letters
    )


def test_tidelake_run_reports_the_failed_flow_and_exits_1(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tidelake.cli import app

    _pipeline(tmp_path)
    (tmp_path / "p.yaml").write_text(PIPELINE.format(amount="no_such_column"))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "p.yaml")])
    assert result.exit_code == 1
    assert "rows out per flow: orders_file 3, orders_land 0" in result.output
    assert "error: flow orders_land failed:" in result.output
    assert "no_such_column" in result.output


@pytest.mark.parametrize("name", ["events.jsonl", "events.json"])
def test_bad_json_lines_in_a_file_are_dead_letters_and_restarts_skip_them(
    tmp_path: Path, name: str
) -> None:
    """Arrow's JSON reader segfaults on input starting with ``null`` and fails the file when a
    field's type changes after its first block; the file source decodes line chunks through
    ``decode_json`` instead, also for JSON Lines in a ``.json`` file."""
    lines = [orjson.dumps({"id": i, "amount": i}) for i in range(20_000)]
    bad = {0: b"null", 9000: b'{"id": 9000, "amount": "lots"}', 15_000: b"{oops", 19_999: b"[1]"}
    for i, line in bad.items():
        lines[i] = line
    (tmp_path / name).write_bytes(b"\n".join(lines) + b"\n\n")
    text = f"""\
name: jsonl
flows:
  land:
    source: {{type: file, path: {name}}}
    sink: {{type: table, table: events}}
"""
    for _ in range(2):  # the second run finds the file read to its end: nothing again
        FlowRunner(loads(text, tmp_path / "p.yaml"), "land", threading.Event()).run()
    with sqlite3.connect(tmp_path / ".tidelake" / "pipeline.db") as c:
        ids = [r[0] for r in c.execute("SELECT id FROM events ORDER BY id")]
    assert ids == [i for i in range(20_000) if i not in bad]
    letters = _dead_letters(tmp_path, "jsonl.land.dlq")
    assert len(letters) == len(bad) and all(letter["reason"] for letter in letters)
