"""Native PostgreSQL CDC (pgoutput over SQL) against a real server.

A writer inserts 10,000 rows, updates 2,000 and deletes 500 while two flows run: one keeps
the current state (upsert + delete), one appends every change (history). The current-state
table must equal the source and the history must hold exactly the 12,500 changes, also
when the flows are killed with SIGKILL five times mid-stream.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tidelake.config import loads
from tidelake.db import connect_db
from tidelake.runtime.base import FlowContext
from tidelake.runtime.runner import FlowRunner
from tidelake.sources.cdc import drop_slot

pytestmark = pytest.mark.integration

INSERTS, UPDATES, DELETES = 10_000, 2_000, 500

PIPELINE = """\
name: cdcit
database: "{database}"
flows:
  current:
    source: {{type: cdc, tables: [public.movies]}}
    transforms: [{{type: unwrap}}]
    sink: {{type: table, table: movies_current, mode: upsert, key: [movieid],
            delete_when: "_op = 'd'"}}
    batch: {{size: 2000, max_latency: 0.3}}
  history:
    source: {{type: cdc, tables: [public.movies]}}
    transforms: [{{type: unwrap}}]
    sink: {{type: table, table: movies_history}}
    batch: {{size: 2000, max_latency: 0.3}}
"""

CREATE = """
CREATE TABLE movies (
    movieid SERIAL PRIMARY KEY,
    title VARCHAR(45) NOT NULL,
    genres TEXT,
    rating DOUBLE PRECISION,
    price NUMERIC(8, 2),
    big BIGINT,
    seen BOOLEAN,
    event_time TIMESTAMP DEFAULT now()
)
"""

# the source as the unwrapped rows represent it (Debezium's JSON mapping)
SOURCE_AS_ROWS = """
SELECT movieid::bigint, title, genres, rating, price::float8, big, seen,
       (extract(epoch FROM event_time) * 1000000)::bigint AS event_time FROM movies
"""
TARGET_ROWS = """
SELECT movieid, title, genres, rating, price, big, seen, event_time FROM movies_current
"""


def write_changes(url: str, pause: float = 0.0) -> None:
    """10,000 inserts, 2,000 updates, 500 deletes, in many small transactions."""
    with psycopg.connect(url, autocommit=True) as c:
        for start in range(0, INSERTS, 500):
            c.execute(
                "INSERT INTO movies (title, genres, rating, price, big, seen)"
                " SELECT 'movie ' || i, 'Drama|Crime', i / 7.0, i * 1.25, i::bigint * 100000000,"
                " i %% 2 = 0 FROM generate_series(%s::int, %s::int) i",
                (start, start + 499),
            )
            time.sleep(pause)
        for start in range(1, UPDATES * 5, 500):  # every 5th row, 100 per transaction
            c.execute(
                "UPDATE movies SET title = title || ' (updated)', rating = rating + 1"
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


def state(url: str) -> tuple[int, int, int]:
    """(rows differing between source and current-state table, source rows, history rows)."""
    with psycopg.connect(url, autocommit=True) as c:
        have = {r[0] for r in c.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )}  # fmt: skip
        if not {"movies_current", "movies_history"} <= have:
            return -1, 0, 0
        diff = c.execute(
            f"SELECT count(*) FROM (({SOURCE_AS_ROWS} EXCEPT {TARGET_ROWS})"
            f" UNION ALL ({TARGET_ROWS} EXCEPT {SOURCE_AS_ROWS})) d"
        ).fetchone()
        n = c.execute("SELECT count(*) FROM movies").fetchone()
        h = c.execute("SELECT count(*) FROM movies_history").fetchone()
        return int(diff[0]), int(n[0]), int(h[0])  # type: ignore[index]


def wait_for(url: str, rows: int, history: int | None, timeout: float) -> tuple[int, int, int]:
    """The state once the source has ``rows`` and the target equals it, with ``history``
    rows in the history (None: once the history stopped growing for 2 s)."""
    deadline = time.monotonic() + timeout
    got, still = state(url), 0
    while time.monotonic() < deadline:
        if history is not None and got == (0, rows, history):
            break
        if history is None and got[:2] == (0, rows) and still >= 4:
            break
        time.sleep(0.5)
        before, got = got, state(url)
        still = still + 1 if got == before else 0
    return got


def landed_snapshot(url: str, flow: str) -> tuple[int | None, bool]:
    """(the snapshot chunk the flow's sink holds, whether its snapshot is complete)."""
    with psycopg.connect(url, autocommit=True) as c:
        try:
            rows = dict(
                c.execute(
                    "SELECT position, next_offset FROM _tidelake_checkpoints WHERE flow = %s",
                    (f"cdcit/{flow}",),
                ).fetchall()
            )
        except psycopg.errors.UndefinedTable:
            return None, False
    slot = f"tidelake_cdcit_{flow}"
    return rows.get(f"{slot}.snapshot"), slot in rows


def wait_snapshots_landed(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(landed_snapshot(url, f)[1] for f in ("current", "history")):
        assert time.monotonic() < deadline, "the initial snapshots did not land"
        time.sleep(0.2)


def _pipeline(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.format(database=url))
    return path


def _start(path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """``tidelake run`` of every flow in ``path``, as a process to kill."""
    return subprocess.Popen(
        [sys.executable, "-m", "tidelake.cli", "run", str(path)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _setup(url: str) -> None:
    _cleanup(url)  # slots are per server: a crashed earlier run may have left them behind
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(CREATE)
    # two flows starting at once race on CREATE TABLE IF NOT EXISTS of the checkpoint table
    # (PostgreSQL raises a unique violation on pg_type): create it up front
    db = connect_db(url)
    db.load_checkpoint("setup")
    db.close()


def _cleanup(url: str) -> None:
    for flow in ("current", "history"):
        drop_slot(url, f"tidelake_cdcit_{flow}", f"tidelake_cdcit_{flow}")


def test_native_cdc_current_state_and_history(tmp_path: Path, postgres_url: str) -> None:
    _setup(url := postgres_url)
    pipeline = loads(_pipeline(tmp_path, url).read_text(), tmp_path / "pipeline.yaml")
    stop = threading.Event()
    runners = [FlowRunner(pipeline, f, stop) for f in ("current", "history")]
    threads = [threading.Thread(target=r.run) for r in runners]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # slots created, (empty) snapshots done
        write_changes(url, pause=0.01)
        got = wait_for(url, INSERTS - DELETES, INSERTS + UPDATES + DELETES, timeout=120)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        assert got == (0, INSERTS - DELETES, INSERTS + UPDATES + DELETES)
        with psycopg.connect(url, autocommit=True) as c:
            ops: dict[str, int] = dict(
                c.execute("SELECT _op, count(*) FROM movies_history GROUP BY 1").fetchall()
            )
            assert ops == {"c": INSERTS, "u": UPDATES, "d": DELETES}
            # the slot was acknowledged up to the sink's position
            (pos,) = c.execute(
                "SELECT next_offset FROM _tidelake_checkpoints WHERE flow = 'cdcit/history'"
                " AND position = 'tidelake_cdcit_history'"
            ).fetchone()  # type: ignore[misc]
            (confirmed,) = c.execute(
                "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots"
                " WHERE slot_name = 'tidelake_cdcit_history'"
            ).fetchone()  # type: ignore[misc]
            assert int(confirmed) == pos
        for r in runners:
            assert r.metrics.state == "stopped" and r.metrics.errors == 0
    finally:
        _cleanup(url)


def test_native_cdc_survives_kill_9(tmp_path: Path, postgres_url: str) -> None:
    _setup(url := postgres_url)
    path = _pipeline(tmp_path, url)
    writer = threading.Thread(target=write_changes, args=(url, 0.25))  # ~13 s of changes
    rng = random.Random(7)

    def start() -> subprocess.Popen[bytes]:
        return _start(path, tmp_path)

    proc = start()
    mid_stream = 0
    try:
        wait_snapshots_landed(url)  # the (empty) snapshots: this test is about the stream
        writer.start()
        for _ in range(5):
            time.sleep(rng.uniform(0.8, 2.5))
            mid_stream += writer.is_alive()
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc = start()
        writer.join()
        got = wait_for(url, INSERTS - DELETES, INSERTS + UPDATES + DELETES, timeout=180)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
    finally:
        _stop(proc)
    try:
        assert mid_stream >= 3
        assert got == (0, INSERTS - DELETES, INSERTS + UPDATES + DELETES)
        with psycopg.connect(url, autocommit=True) as c:
            dupes = c.execute(
                "SELECT count(*) FROM (SELECT movieid, _op, _lsn, title FROM movies_history"
                " GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) d"
            ).fetchone()
            assert dupes == (0,)
    finally:
        _cleanup(url)


def test_slot_lag_warning_and_drop_slot(tmp_path: Path, postgres_url: str) -> None:
    _setup(url := postgres_url)
    pipeline = loads(
        PIPELINE.format(database=url).replace(
            "tables: [public.movies]}",
            "tables: [public.movies], slot_lag_warning_mb: 0.001, snapshot: never}",
            1,
        ),
        tmp_path / "pipeline.yaml",
    )
    runner = FlowRunner(pipeline, "current", threading.Event())
    ctx = FlowContext(
        flow="current", pipeline=pipeline, metrics=runner.metrics, broker_factory=runner._broker
    )
    runner.source.open(ctx, {})
    try:
        write_changes(url)
        runner.source.read(10, 0.1)  # the first read checks the slot's retained WAL
        assert "retains" in runner.metrics.last_error and "drop-slot" in runner.metrics.last_error
    finally:
        runner.source.close()
    assert drop_slot(url, "tidelake_cdcit_current", "tidelake_cdcit_current") is True
    assert drop_slot(url, "tidelake_cdcit_current") is False


def test_native_cdc_snapshot_resumes_after_kill_9(tmp_path: Path, postgres_url: str) -> None:
    """A table of 40,000 rows is snapshotted while a writer changes it, and the flows are
    SIGKILLed mid-snapshot: each restart resumes where the landed rows end (in a new snapshot,
    dropping the stream's changes that it already holds), so the history holds every row once
    as ``r`` followed by its later changes, and never a change twice."""
    url = postgres_url
    existing = 40_000
    _setup(url)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            "INSERT INTO movies (title, genres, rating, price, big, seen) SELECT 'old ' || i,"
            " 'Comedy', i / 3.0, i * 0.5, i, i %% 3 = 0 FROM generate_series(1, %s) i",
            (existing,),
        )
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.format(database=url).replace("size: 2000", "size: 500"))
    writer = threading.Thread(target=write_changes, args=(url, 0.15))

    def start() -> subprocess.Popen[bytes]:
        return _start(path, tmp_path)

    proc, kills = start(), 0
    try:
        writer.start()
        while kills < 3:  # kill once the history flow landed 3 more chunks of its snapshot
            first, done = landed_snapshot(url, "history")
            while not done and (landed_snapshot(url, "history")[0] or 0) < (first or 0) + 3:
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
                time.sleep(0.05)
            if landed_snapshot(url, "history")[1]:
                break
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = start()
        writer.join()
        rows = existing + INSERTS - DELETES
        got = wait_for(url, rows, None, timeout=180)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
    finally:
        _stop(proc)
    try:
        assert kills == 3, "the snapshot finished before three kills"
        assert got[:2] == (0, rows)
        with psycopg.connect(url, autocommit=True) as c:
            events = c.execute(
                "SELECT movieid, _op FROM movies_history ORDER BY movieid, _lsn, _op <> 'r'"
            ).fetchall()
            present = {r[0] for r in c.execute("SELECT movieid FROM movies")}
        exists: dict[int, bool] = {}
        for movieid, op in events:  # each row's life: read or created, updated, deleted
            alive = exists.get(movieid, False)
            assert alive == (op in "ud"), f"movie {movieid}: {op!r} when alive={alive}"
            exists[movieid] = op != "d"
        assert {m for m, alive in exists.items() if alive} == present
        reads = sum(op == "r" for _, op in events)
        assert existing - DELETES <= reads <= existing + INSERTS
    finally:
        _cleanup(url)
