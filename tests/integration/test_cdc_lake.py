"""CDC into the lake, two ways: history (append) and current state (upsert by key).

Real PostgreSQL. Changes are captured into ``<prefix>.public.movies`` — by the native
engine through a ``cdc -> topic`` flow (embedded log), or by Debezium on Kafka Connect
(Kafka) — and two flows unwrap that topic into lake tables:

- ``movies_history``: every change (12,500 rows: 10,000 c, 2,000 u, 500 d);
- ``movies_current``: ``mode: upsert, key: [movieid], delete_when: "_op = 'd'"`` — read
  through ``tidelake.lake.QueryEngine`` it must equal ``SELECT * FROM movies``.

Halfway through the inserts the source table gains a column (``ALTER TABLE ... ADD
COLUMN``): it must appear in both lake tables.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_cdc_native import CREATE, DELETES, INSERTS, UPDATES

from tidelake.config import Pipeline, loads
from tidelake.lake import QueryEngine
from tidelake.runtime.runner import FlowRunner
from tidelake.sources.cdc import CdcConfig, drop_slot

pytestmark = pytest.mark.integration

CHANGES = INSERTS + UPDATES + DELETES
LAKE_FLOWS = """\
  history:
    source: {{type: topic, topic: {topic}}}
    transforms: [{{type: unwrap}}]
    sink: {{type: lake, table: movies_history}}
    batch: {{size: 3000, max_latency: 0.5}}
  current:
    source: {{type: topic, topic: {topic}}}
    transforms: [{{type: unwrap}}]
    sink: {{type: lake, table: movies_current, mode: upsert, key: [movieid],
            delete_when: "_op = 'd'"}}
    batch: {{size: 3000, max_latency: 0.5}}
"""
NATIVE = """\
name: cdclake{unique}
broker: embedded
database: "{database}"
lake: file://lake
flows:
  capture:
    source: {{type: cdc, tables: [public.movies]}}
    sink: {{type: topic, topic: "{{topic}}", value: envelope}}
    batch: {{size: 2000, max_latency: 0.3}}
"""
DEBEZIUM = """\
name: dbzlake{unique}
broker: {kafka}
database: "{database}"
lake: file://lake
flows:
"""
BUSINESS = "movieid, title, genres, rating, price, big, seen, event_time, note"
# the source as unwrapped rows represent it (Debezium's JSON mapping)
SOURCE_ROWS = """
SELECT movieid::bigint, title, genres, rating, price::float8, big, seen,
       (extract(epoch FROM event_time) * 1000000)::bigint AS event_time, note FROM movies
"""


def write_changes(url: str, pause: float = 0.01) -> None:
    """10,000 inserts (a column added after 5,000), 2,000 updates, 500 deletes."""
    with psycopg.connect(url, autocommit=True) as c:
        for start in range(0, INSERTS, 500):
            if start == INSERTS // 2:
                c.execute("ALTER TABLE movies ADD COLUMN note TEXT")
            note = "'note ' || i" if start >= INSERTS // 2 else "NULL"
            columns = "title, genres, rating, price, big, seen" + (
                ", note" if start >= INSERTS // 2 else ""
            )
            values = (
                "'movie ' || i, 'Drama|Crime', i / 7.0, i * 1.25, i::bigint * 100000000, i % 2 = 0"
            )
            c.execute(
                f"INSERT INTO movies ({columns}) SELECT {values}"
                + (f", {note}" if start >= INSERTS // 2 else "")
                + f" FROM generate_series({start}, {start + 499}) i"
            )
            time.sleep(pause)
        for start in range(1, UPDATES * 5, 500):  # every 5th row, 100 per transaction
            c.execute(
                "UPDATE movies SET title = title || ' (updated)', rating = rating + 1,"
                " note = 'updated ' || movieid"
                " WHERE movieid >= %s AND movieid < %s AND movieid %% 5 = 0",
                (start, start + 500),
            )
            time.sleep(pause)
        for start in range(1, DELETES * 13, 650):  # every 13th row, 50 per transaction
            c.execute(
                "DELETE FROM movies WHERE movieid >= %s AND movieid < %s AND movieid %% 13 = 1",
                (start, start + 650),
            )
            time.sleep(pause)


def source_rows(url: str) -> set[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as c:
        return set(c.execute(SOURCE_ROWS).fetchall())


def lake_state(q: QueryEngine) -> tuple[int, int]:
    """(current-state rows, history rows); -1 while a table does not exist yet."""
    names = {t.name for t in q.tables() if t.kind == "lake"}
    current = (
        q.sql("SELECT count(*) AS n FROM movies_current") if "movies_current" in names else None
    )
    history = (
        q.sql("SELECT count(*) AS n FROM movies_history") if "movies_history" in names else None
    )
    return (
        current.column("n")[0].as_py() if current else -1,
        history.column("n")[0].as_py() if history else -1,
    )


def run_and_check(
    pipeline: Pipeline, url: str, before_changes: Callable[[list[FlowRunner]], None]
) -> dict[str, float]:
    """Run every flow, write the changes, wait for the lake, compare; returns timings."""
    stop = threading.Event()
    runners = [FlowRunner(pipeline, f, stop) for f in pipeline.flows]
    threads = [threading.Thread(target=r.run, name=r.name) for r in runners]
    timings: dict[str, float] = {}
    q = QueryEngine(pipeline)
    try:
        for t in threads:
            t.start()
        before_changes(runners)
        started = time.monotonic()
        write_changes(url)
        timings["write_s"] = time.monotonic() - started
        deadline = time.monotonic() + 240
        got = lake_state(q)
        while time.monotonic() < deadline and got != (INSERTS - DELETES, CHANGES):
            assert all(t.is_alive() for t in threads), [r.metrics.last_error for r in runners]
            time.sleep(0.5)
            got = lake_state(q)
        timings["caught_up_s"] = time.monotonic() - started
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    try:
        assert got == (INSERTS - DELETES, CHANGES), [r.metrics.last_error for r in runners]
        current = q.sql(f"SELECT {BUSINESS} FROM movies_current")
        rows = {tuple(r.values()) for r in current.to_pylist()}
        assert current.num_rows == len(rows) == INSERTS - DELETES
        expected = source_rows(url)
        assert rows == expected, (len(rows - expected), len(expected - rows))
        ops = q.sql("SELECT _op, count(*) AS n FROM movies_history GROUP BY 1").to_pylist()
        assert {r["_op"]: r["n"] for r in ops} == {"c": INSERTS, "u": UPDATES, "d": DELETES}
        noted = q.sql("SELECT count(note) AS n FROM movies_history").column("n")[0].as_py()
        assert noted == INSERTS // 2 + UPDATES, "the added column is in the history"
        for r in runners:
            assert r.metrics.errors == 0, (r.name, r.metrics.last_error)
    finally:
        q.close()
    return timings


def _setup(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(CREATE)


def test_native_cdc_to_lake_history_and_current_state(
    tmp_path: Path, postgres_url: str, unique: str
) -> None:
    url = postgres_url
    _setup(url)
    topic = "dbserver1.public.movies"
    text = NATIVE.format(unique=unique, database=url) + LAKE_FLOWS.format(topic=topic)
    pipeline = loads(text, tmp_path / "pipeline.yaml")
    from tidelake.broker import connect

    broker = connect(pipeline.url(pipeline.broker))
    broker.create_topic(topic, 1)
    broker.close()

    def wait_running(runners: list[FlowRunner]) -> None:
        time.sleep(1.5)  # slot created, (empty) snapshot done

    try:
        timings = run_and_check(pipeline, url, wait_running)
        print(f"native cdc -> lake timings: {timings}")
    finally:
        drop_slot(url, f"tidelake_cdclake{unique}_capture", f"tidelake_cdclake{unique}_capture")


@pytest.mark.skipif(
    os.environ.get("TIDELAKE_SKIP_CONNECT") == "1", reason="TIDELAKE_SKIP_CONNECT=1"
)
def test_debezium_cdc_to_lake_history_and_current_state(
    tmp_path: Path, postgres_url: str, unique: str
) -> None:
    from tidelake import infra
    from tidelake.broker import connect
    from tidelake.sources.cdc.debezium import ConnectClient, connector_config

    urls = infra.up(["connect"])
    url = postgres_url
    _setup(url)
    prefix = f"t{unique}"
    topic = f"{prefix}.public.movies"
    text = DEBEZIUM.format(unique=unique, kafka=urls["kafka"], database=url)
    pipeline = loads(text + LAKE_FLOWS.format(topic=topic), tmp_path / "pipeline.yaml")
    broker = connect(pipeline.url(pipeline.broker))
    broker.create_topic(topic, 1)
    broker.close()
    name = f"dbzlake_{unique}"
    cfg = CdcConfig(
        type="cdc",
        engine="debezium",
        tables=["public.movies"],
        topic_prefix=prefix,
        connector_config={"tombstones.on.delete": "false"},
    )
    client = ConnectClient(urls["connect"])

    def register(runners: list[FlowRunner]) -> None:
        client.put_config(name, connector_config(cfg, url, name, name))
        client.wait_running(name, 120)

    try:
        timings = run_and_check(pipeline, url, register)
        print(f"debezium -> lake timings: {timings}")
    finally:
        client.delete(name)
        client.close()
        time.sleep(2)  # the connector's task releases its slot
        for _ in range(20):
            try:
                drop_slot(url, name, name)
                break
            except Exception:
                time.sleep(0.5)


def test_lake_flows_survive_kill_9(tmp_path: Path, postgres_url: str, unique: str) -> None:
    """The two lake flows are killed with SIGKILL five times mid-stream (the capture flow
    keeps running): the current state still equals the source and the history holds every
    change exactly once — each commit is atomic with its checkpoint, a replay converges.

    Only the lake flows are killed: ``cdc -> topic`` is at-least-once (``sinks.topic``), and
    a record it re-sends after a crash gets a new offset, so no downstream sink could tell
    it from a new change."""
    url = postgres_url
    _setup(url)
    topic = "dbserver1.public.movies"
    path = tmp_path / "pipeline.yaml"
    path.write_text(NATIVE.format(unique=unique, database=url) + LAKE_FLOWS.format(topic=topic))
    pipeline = loads(path.read_text(), path)
    from tidelake.broker import connect

    broker = connect(pipeline.url(pipeline.broker))
    broker.create_topic(topic, 1)
    broker.close()
    stop = threading.Event()
    capture = FlowRunner(pipeline, "capture", stop)
    capture_thread = threading.Thread(target=capture.run)
    writer = threading.Thread(target=write_changes, args=(url, 0.25))
    rng = random.Random(5)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tidelake.cli",
                "run",
                str(path),
                "-f",
                "history",
                "-f",
                "current",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    capture_thread.start()
    proc = start()
    mid_stream = 0
    q = QueryEngine(pipeline)
    try:
        time.sleep(3.0)
        writer.start()
        for _ in range(5):
            time.sleep(rng.uniform(0.8, 2.5))
            mid_stream += writer.is_alive()
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc = start()
        writer.join()
        deadline = time.monotonic() + 180
        got = lake_state(q)
        while time.monotonic() < deadline and got != (INSERTS - DELETES, CHANGES):
            time.sleep(0.5)
            got = lake_state(q)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        stop.set()
        capture_thread.join(30)
    try:
        assert mid_stream >= 3
        assert capture.metrics.errors == 0, capture.metrics.last_error
        assert got == (INSERTS - DELETES, CHANGES)
        current = q.sql(f"SELECT {BUSINESS} FROM movies_current")
        assert {tuple(r.values()) for r in current.to_pylist()} == source_rows(url)
        dupes = q.sql(
            "SELECT count(*) AS n FROM (SELECT movieid, _op, _lsn, title FROM movies_history"
            " GROUP BY ALL HAVING count(*) > 1)"
        )
        assert dupes.column("n")[0].as_py() == 0
    finally:
        q.close()
        drop_slot(url, f"tidelake_cdclake{unique}_capture", f"tidelake_cdclake{unique}_capture")
