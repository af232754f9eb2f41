"""MySQL CDC (MariaDB's row-based binlog) into the lake: the native engine under kill -9,
and Debezium's MySQL connector on Kafka Connect.

A consistent snapshot of 500 rows, then 10,000 inserts (``ALTER TABLE ... ADD COLUMN`` after
5,000), 2,000 updates and 500 deletes in transactions of 100 rows (native: while the capture
flow is killed -9 five times and restarted): the topic must hold every change exactly once,
the lake's history table every change, and its current-state table must equal the source
table."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import killing
import pytest

from tidelake.broker import connect
from tidelake.config import load
from tidelake.db import mysql_connect
from tidelake.lake import QueryEngine

pytestmark = pytest.mark.integration

SNAPSHOT, INSERTS, UPDATES, DELETES = 500, 10_000, 2_000, 500
CHANGES = SNAPSHOT + INSERTS + UPDATES + DELETES
CHUNK = 100  # rows per source transaction
WRITE_SECONDS = 60.0  # the paced writer's pace: until the kills are over, then at once

PIPELINE = """\
name: mycdc{unique}
broker: {broker}
database: "{database}"
lake: file://lake
flows:
  capture:
    source: {{type: cdc, engine: {engine}, tables: [ticks], topic_prefix: market{unique},
              connect_url: "{connect}"}}
    sink: {{type: topic, topic: market{unique}.ticks, value: envelope}}
    batch: {{size: 200, max_latency: 0.2}}
  history:
    source: {{type: topic, topic: market{unique}.ticks}}
    transforms: [{{type: unwrap}}]
    sink: {{type: lake, table: ticks_history}}
    batch: {{size: 5000, max_latency: 0.5}}
  current:
    source: {{type: topic, topic: market{unique}.ticks}}
    transforms: [{{type: unwrap}}]
    sink: {{type: lake, table: ticks_current, mode: upsert, key: [id], delete_when: "_op = 'd'"}}
    batch: {{size: 5000, max_latency: 0.5}}
"""


def _write_changes(url: str, until: threading.Event | None = None) -> None:
    """The inserts (the column added halfway), updates and deletes, CHUNK rows a transaction;
    paced over WRITE_SECONDS until ``until`` is set (without one: at once)."""
    conn = mysql_connect(url)
    pause = WRITE_SECONDS * CHUNK / (INSERTS + UPDATES + DELETES)

    def commit(sql: str, rows: list[tuple[object, ...]]) -> None:
        conn.begin()
        with conn.cursor() as cur:
            cur.executemany(sql, rows)
        conn.commit()
        if until is not None:
            until.wait(pause)

    for start in range(SNAPSHOT, SNAPSHOT + INSERTS, CHUNK):
        rows = [(n, f"S{n % 17}", n / 4, n % 100) for n in range(start, start + CHUNK)]
        if start - SNAPSHOT < INSERTS // 2:
            commit("INSERT INTO ticks (id, sym, price, qty) VALUES (%s, %s, %s, %s)", rows)
            continue
        if start - SNAPSHOT == INSERTS // 2:
            with conn.cursor() as cur:
                cur.execute("ALTER TABLE ticks ADD COLUMN venue VARCHAR(8)")
        commit(
            "INSERT INTO ticks (id, sym, price, qty, venue) VALUES (%s, %s, %s, %s, %s)",
            [(*r, "X") for r in rows],
        )
    ids = random.Random(7).sample(range(SNAPSHOT + INSERTS), UPDATES + DELETES)
    for i in range(0, UPDATES, CHUNK):
        commit(
            "UPDATE ticks SET qty = qty + 1000, price = price * 2 WHERE id = %s",
            [(n,) for n in ids[i : i + CHUNK]],
        )
    for i in range(UPDATES, UPDATES + DELETES, CHUNK):
        commit("DELETE FROM ticks WHERE id = %s", [(n,) for n in ids[i : i + CHUNK]])
    conn.close()


def _setup(tmp_path: Path, url: str, unique: str, **pipeline: str) -> Path:
    conn = mysql_connect(url)
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE ticks (id INT PRIMARY KEY, sym VARCHAR(8) NOT NULL,"
            " price DECIMAL(12, 2), qty INT)"
        )
        cur.executemany(
            "INSERT INTO ticks VALUES (%s, %s, %s, %s)",
            [(n, f"S{n % 17}", n / 4, n % 100) for n in range(SNAPSHOT)],
        )
    conn.close()
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.format(unique=unique, database=url, **pipeline))
    return path


def test_native_mysql_cdc_into_the_lake_under_kill_9(
    tmp_path: Path, unique: str, mysql_url: str
) -> None:
    pipeline = _setup(tmp_path, mysql_url, unique, broker="embedded", engine="mysql", connect="")
    broker = connect(f"embedded:///{tmp_path}/.tidelake/log.db")

    def events() -> int:
        try:
            return sum(broker.end_offsets(f"market{unique}.ticks").values())
        except Exception:  # noqa: BLE001 - the topic does not exist before the first batch
            return 0

    # the snapshot first (a crash during it restarts it: its rows would arrive twice)
    first = killing.start(pipeline, ["capture"])
    try:
        killing.wait_for_progress(events, SNAPSHOT - 1, SNAPSHOT, first, timeout=90)
    finally:
        first.kill()
        first.wait()
    assert events() == SNAPSHOT
    kills_over = threading.Event()
    writer = threading.Thread(target=_write_changes, args=(mysql_url, kills_over), daemon=True)
    writer.start()
    try:
        seen = killing.kill_repeatedly(
            lambda: killing.start(pipeline, ["capture"]),
            events,
            CHANGES,
            5,
            random.Random(unique),
            pause=(0.2, 0.8),
        )
        writing = writer.is_alive()
    finally:
        kills_over.set()
    writer.join(120)
    assert writing and len(seen) == 5, f"kills not all during the writes: {seen}"
    killing.run_to_target(
        lambda: killing.start(pipeline),
        lambda: _count(pipeline),
        CHANGES,
        ready=killing.flow_running(tmp_path / ".tidelake", "history"),
    )
    assert events() == CHANGES  # the topic: every change once
    broker.close()
    _assert_lake_equals_source(pipeline)


@pytest.mark.skipif(
    os.environ.get("TIDELAKE_SKIP_CONNECT") == "1", reason="TIDELAKE_SKIP_CONNECT=1"
)
def test_debezium_mysql_cdc_into_the_lake(tmp_path: Path, unique: str, mysql_url: str) -> None:
    from tidelake import infra
    from tidelake.sources.cdc.debezium import ConnectClient

    urls = infra.up(["connect"])
    pipeline = _setup(
        tmp_path,
        mysql_url,
        unique,
        broker=urls["kafka"],
        engine="debezium",
        connect=urls["connect"],
    )
    broker = connect(urls["kafka"])
    proc = killing.start(pipeline)
    client = ConnectClient(urls["connect"])
    try:
        # the snapshot first: changes written during it may arrive as 'r' rather than 'c'
        killing.wait_for_progress(
            lambda: (
                sum(broker.end_offsets(f"market{unique}.ticks").values())
                if f"market{unique}.ticks" in broker.topics()
                else 0
            ),
            SNAPSHOT - 1,
            SNAPSHOT,
            proc,
            timeout=120,
            poll=0.2,
        )
        _write_changes(mysql_url)
        deadline = time.monotonic() + 120
        while _count(pipeline) < CHANGES and time.monotonic() < deadline:
            assert proc.poll() is None, killing.stderr_tail(proc)
            time.sleep(0.3)
        time.sleep(1.0)  # a duplicate would land after the count first reached the target
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, killing.stderr_tail(proc)
        assert f"tidelake-mycdc{unique}-capture.schema-history" in broker.topics()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.retire(f"tidelake-mycdc{unique}-capture")
        client.close()
        broker.close()
    _assert_lake_equals_source(pipeline)


def _assert_lake_equals_source(pipeline: Path) -> None:
    """History: every change once; current state: the source table, the added column too."""
    engine = QueryEngine(load(pipeline))
    try:
        grouped = engine.sql(
            "SELECT _op, count(*) AS n, count(DISTINCT id) AS ids FROM lake.ticks_history"
            " GROUP BY 1"
        )
        ops = {r["_op"]: (r["n"], r["ids"]) for r in grouped.to_pylist()}
        lake = engine.sql(
            "SELECT id, sym, price, qty, venue FROM lake.ticks_current ORDER BY id"
        ).to_pylist()
        source = engine.sql(
            "SELECT id, sym, CAST(price AS DOUBLE) AS price, qty, venue FROM db.ticks ORDER BY id"
        ).to_pylist()
    finally:
        engine.close()
    # every change once: as many rows as changes, each of a different id
    counts = {"r": SNAPSHOT, "c": INSERTS, "u": UPDATES, "d": DELETES}
    assert ops == {op: (n, n) for op, n in counts.items()}
    assert len(lake) == SNAPSHOT + INSERTS - DELETES
    assert lake == source
    assert sum(r["venue"] == "X" for r in lake) > 0  # the column added mid-stream arrived


def _count(pipeline: Path) -> int:
    try:
        engine = QueryEngine(load(pipeline))
    except Exception:  # noqa: BLE001 - the lake is created by the first commit
        return 0
    try:
        return int(engine.sql("SELECT count(*) AS n FROM lake.ticks_history").to_pylist()[0]["n"])
    except Exception:  # noqa: BLE001
        return 0
    finally:
        engine.close()
