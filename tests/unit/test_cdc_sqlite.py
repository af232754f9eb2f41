"""SQLite CDC end to end: triggers -> envelopes -> unwrap -> table sink (current state)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tidelake.config import loads
from tidelake.runtime.runner import FlowRunner

PIPELINE = """\
name: shop
database: sqlite:///out.db
flows:
  current:
    source: {type: cdc, engine: sqlite, database: "sqlite:///src.db", tables: [movies, ratings]}
    transforms: [{type: unwrap, table: movies}]
    sink: {type: table, table: movies, mode: upsert, key: [movie_id], delete_when: "_op = 'd'"}
    batch: {size: 500, max_latency: 0.1}
  history:
    source: {type: cdc, engine: sqlite, database: "sqlite:///src.db", tables: [movies, ratings]}
    transforms: [{type: unwrap}]
    sink: {type: table, table: history}
    batch: {size: 500, max_latency: 0.1}
  envelopes:
    source: {type: cdc, engine: sqlite, database: "sqlite:///src.db", tables: [movies]}
    sink: {type: table, table: envelopes}
    batch: {size: 500, max_latency: 0.1}
"""


def _source(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path / "src.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS movies (movie_id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
        " rating REAL, seen INTEGER)"
    )
    conn.execute("CREATE TABLE IF NOT EXISTS ratings (user_id INTEGER, movie_id INTEGER, r REAL)")
    return conn


def _run(
    path: Path,
    flows: list[str],
    until: Callable[[], bool],
    while_running: Callable[[], None] = lambda: None,
) -> None:
    pipeline = loads(PIPELINE, path / "p.yaml")
    stop = threading.Event()
    runners = [FlowRunner(pipeline, f, stop) for f in flows]
    threads = [threading.Thread(target=r.run) for r in runners]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    try:
        while_running()
        while time.monotonic() < deadline and not until():
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    for r in runners:
        assert r.metrics.state == "stopped", r.metrics.last_error


def _rows(path: Path, sql: str) -> list[Any]:
    try:
        with sqlite3.connect(path / "out.db") as c:
            return c.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []


def test_current_state_and_history_follow_the_source(tmp_path: Path) -> None:
    src = _source(tmp_path)
    src.executemany(
        "INSERT INTO movies VALUES (?, ?, ?, ?)", [(i, f"m{i}", i / 4, i % 2) for i in range(50)]
    )
    src.execute("INSERT INTO ratings VALUES (1, 1, 4.5)")

    def same() -> bool:
        want = src.execute("SELECT * FROM movies ORDER BY 1").fetchall()
        return (
            _rows(tmp_path, "SELECT movie_id, title, rating, seen FROM movies ORDER BY 1") == want
        )

    _run(tmp_path, ["current", "history"], same)  # initial snapshot: 50 + 1 rows as 'r'
    src.executemany(
        "INSERT INTO movies VALUES (?, ?, ?, ?)",
        [(i, f"m{i}", i / 4, i % 2) for i in range(50, 300)],
    )
    src.execute(
        "UPDATE movies SET title = title || '!', rating = rating + 0.5 WHERE movie_id % 3 = 0"
    )
    src.execute("DELETE FROM movies WHERE movie_id % 5 = 0")

    def add_column() -> None:
        # triggers are re-installed on the reader's next poll after the ALTER (documented gap:
        # rows written in between lack the new column), so let one poll pass
        src.execute("ALTER TABLE movies ADD COLUMN genre TEXT")
        time.sleep(0.5)
        src.execute("UPDATE movies SET genre = 'drama' WHERE movie_id < 10")

    changes = 250 + 100 + 60 + 8  # inserts, updates, deletes, genre updates (ids 1-9 minus 5)

    def caught_up() -> bool:
        want = src.execute("SELECT * FROM movies ORDER BY 1").fetchall()
        got = _rows(tmp_path, "SELECT movie_id, title, rating, seen, genre FROM movies ORDER BY 1")
        n = _rows(tmp_path, "SELECT count(*) FROM history")
        return got == want and n == [(51 + changes,)]

    _run(tmp_path, ["current", "history"], caught_up, add_column)
    assert caught_up()
    ops = dict(_rows(tmp_path, "SELECT _op, count(*) FROM history GROUP BY 1"))
    assert ops == {"r": 51, "c": 250, "u": 108, "d": 60}
    assert _rows(tmp_path, "SELECT DISTINCT _table FROM history ORDER BY 1") == [
        ("main.movies",),
        ("main.ratings",),
    ]
    # every reader committed everything: the change table was pruned
    assert src.execute("SELECT count(*) FROM _tidelake_changes").fetchone() == (0,)


def test_envelopes_are_debezium_shaped(tmp_path: Path) -> None:
    src = _source(tmp_path)
    src.execute("INSERT INTO movies VALUES (1, 'Heat', 4.5, 1)")
    _run(tmp_path, ["envelopes"], lambda: bool(_rows(tmp_path, "SELECT 1 FROM envelopes")))
    src.execute("UPDATE movies SET title = 'Heat (1995)' WHERE movie_id = 1")
    src.execute("DELETE FROM movies WHERE movie_id = 1")
    _run(tmp_path, ["envelopes"], lambda: len(_rows(tmp_path, "SELECT 1 FROM envelopes")) == 3)
    rows = _rows(tmp_path, "SELECT topic, key, before, after, op, source FROM envelopes")
    assert [r[4] for r in rows] == ["r", "u", "d"]
    assert {r[0] for r in rows} == {"dbserver1.main.movies"}
    assert all(orjson.loads(r[1]) == {"movie_id": 1} for r in rows)
    snap, upd, dele = rows
    assert snap[2] is None and orjson.loads(snap[3]) == {
        "movie_id": 1, "title": "Heat", "rating": 4.5, "seen": 1,
    }  # fmt: skip
    assert (
        orjson.loads(upd[2])["title"] == "Heat" and orjson.loads(upd[3])["title"] == "Heat (1995)"
    )
    assert orjson.loads(dele[2])["title"] == "Heat (1995)" and dele[3] is None
    source = orjson.loads(upd[5])
    assert source["table"] == "movies" and source["snapshot"] == "false"
    assert orjson.loads(snap[5])["snapshot"] == "true"
    assert source["lsn"] > orjson.loads(snap[5])["lsn"]


TO_TOPICS = """\
name: shop
flows:
  publish:
    source: {type: cdc, engine: sqlite, database: "sqlite:///src.db", tables: [movies, ratings]}
    sink: {type: topic, topic: "{topic}", key: key, value: envelope}
    batch: {size: 500, max_latency: 0.1}
"""


def test_topic_sink_writes_debezium_payloads_per_table_topic(tmp_path: Path) -> None:
    from tidelake.broker.embedded import EmbeddedBroker

    src = _source(tmp_path)
    src.execute("INSERT INTO movies VALUES (1, 'Heat', 4.5, 1)")
    src.execute("INSERT INTO ratings VALUES (7, 1, 5.0)")
    pipeline = loads(TO_TOPICS, tmp_path / "p.yaml")
    broker = EmbeddedBroker(str(tmp_path / ".tidelake" / "log.db"))

    def published(n: int) -> bool:
        topics = broker.topics()
        return "dbserver1.main.movies" in topics and (
            sum(broker.end_offsets("dbserver1.main.movies").values()) >= n
        )

    stop = threading.Event()
    runner = FlowRunner(pipeline, "publish", stop)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not published(1):
            time.sleep(0.1)
        src.execute("UPDATE movies SET rating = 5.0 WHERE movie_id = 1")  # after the snapshot
        while time.monotonic() < deadline and not published(2):
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(10)
    movies = broker.consumer("check", ["dbserver1.main.movies"]).poll(10, 2.0)
    values = [orjson.loads(v) for v in movies.values if v is not None]
    assert [v["op"] for v in values] == ["r", "u"]
    assert set(values[0]) == {"before", "after", "source", "op", "ts_ms"}
    assert values[0]["after"] == {"movie_id": 1, "title": "Heat", "rating": 4.5, "seen": 1}
    assert values[1]["before"]["rating"] == 4.5 and values[1]["after"]["rating"] == 5.0
    assert values[1]["source"]["table"] == "movies"
    assert [orjson.loads(k) for k in movies.keys if k is not None] == [{"movie_id": 1}] * 2
    ratings = broker.consumer("check2", ["dbserver1.main.ratings"]).poll(10, 2.0)
    assert orjson.loads(ratings.values[0] or b"")["after"] == {
        "user_id": 7,
        "movie_id": 1,
        "r": 5.0,
    }
