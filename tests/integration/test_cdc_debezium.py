"""Debezium on Kafka Connect as the ``cdc`` engine, side by side with the native engine.

The same 12,500 changes as the native test: Debezium's current-state table equals the
source, its history has every change once, and its events unwrap to the same rows as
the native engine's (ignoring _lsn/_ts/provenance).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest
from test_cdc_native import DELETES, INSERTS, SOURCE_AS_ROWS, UPDATES, _setup, write_changes

from tidelake.config import loads
from tidelake.runtime.runner import FlowRunner
from tidelake.sources.cdc import drop_slot

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("TIDELAKE_SKIP_CONNECT") == "1", reason="TIDELAKE_SKIP_CONNECT=1"
    ),
]

PIPELINE = """\
name: dbz{unique}
broker: {kafka}
database: "{database}"
flows:
  dbz_current:
    source: {{type: cdc, engine: debezium, tables: [public.movies], topic_prefix: t{unique},
              connect_url: "{connect}"}}
    transforms: [{{type: unwrap}}]
    sink: {{type: table, table: dbz_current, mode: upsert, key: [movieid],
            delete_when: "_op = 'd'"}}
    batch: {{size: 5000, max_latency: 0.3}}
  dbz_history:
    source: {{type: cdc, engine: debezium, tables: [public.movies], topic_prefix: t{unique},
              connect_url: "{connect}", slot: dbz_{unique}_h}}
    transforms: [{{type: unwrap}}]
    sink: {{type: table, table: dbz_history}}
    batch: {{size: 5000, max_latency: 0.3}}
  native_history:
    source: {{type: cdc, tables: [public.movies]}}
    transforms: [{{type: unwrap}}]
    sink: {{type: table, table: native_history}}
    batch: {{size: 5000, max_latency: 0.3}}
"""
COLUMNS = "movieid, title, genres, rating, price, big, seen, event_time"


@pytest.fixture(scope="module")
def connect_urls() -> dict[str, str]:
    from tidelake import infra

    return infra.up(["connect"])


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        try:
            return int(c.execute(sql).fetchone()[0])  # type: ignore[index]
        except psycopg.errors.UndefinedTable:
            return -1


def test_debezium_matches_source_and_native_engine(
    tmp_path: Path, postgres_url: str, connect_urls: dict[str, str], unique: str
) -> None:
    url = postgres_url
    _setup(url)
    text = PIPELINE.format(
        unique=unique, kafka=connect_urls["kafka"], connect=connect_urls["connect"], database=url
    )
    pipeline = loads(text, tmp_path / "pipeline.yaml")
    stop = threading.Event()
    runners = [FlowRunner(pipeline, f, stop) for f in pipeline.flows]
    threads = [threading.Thread(target=r.run, name=r.name) for r in runners]
    diff = (
        f"SELECT count(*) FROM (({SOURCE_AS_ROWS} EXCEPT SELECT {COLUMNS} FROM dbz_current)"
        f" UNION ALL (SELECT {COLUMNS} FROM dbz_current EXCEPT {SOURCE_AS_ROWS})) d"
    )
    total = INSERTS + UPDATES + DELETES
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not all(
            r.metrics.state == "running" for r in runners
        ):
            assert all(t.is_alive() for t in threads), [r.metrics.last_error for r in runners]
            time.sleep(0.5)
        write_changes(url, pause=0.01)
        while time.monotonic() < deadline:
            done = (
                _count(url, diff) == 0
                and _count(url, "SELECT count(*) FROM dbz_current") == INSERTS - DELETES
                and _count(url, "SELECT count(*) FROM dbz_history") == total
                and _count(url, "SELECT count(*) FROM native_history") == total
            )
            if done:
                break
            assert all(t.is_alive() for t in threads), [r.metrics.last_error for r in runners]
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        with httpx.Client(base_url=connect_urls["connect"]) as http:
            for r in runners:
                name = getattr(r.source.engine, "name", None)  # type: ignore[attr-defined]
                if name and r.source.config.engine == "debezium":  # type: ignore[attr-defined]
                    http.delete(f"/connectors/{name}")
        time.sleep(2)  # the connector's task releases its slot
    try:
        assert _count(url, diff) == 0
        assert _count(url, "SELECT count(*) FROM dbz_history") == total
        with psycopg.connect(url, autocommit=True) as c:
            ops: dict[str, int] = dict(
                c.execute("SELECT _op, count(*) FROM dbz_history GROUP BY 1").fetchall()
            )
            assert ops == {"c": INSERTS, "u": UPDATES, "d": DELETES}

            def rows(table: str) -> tuple[Counter[tuple[object, ...]], Counter[tuple[object, ...]]]:
                changes = c.execute(
                    f"SELECT {COLUMNS}, _op, _table FROM {table} WHERE _op <> 'd'"
                ).fetchall()
                deletes = c.execute(f"SELECT movieid, _op, _table FROM {table} WHERE _op = 'd'")
                return Counter(changes), Counter(deletes.fetchall())

            # identical unwrapped rows; deletes by key: with REPLICA IDENTITY DEFAULT Debezium
            # fills the old row's unknown columns with defaults ('' / 0), the native engine NULL
            assert rows("dbz_history") == rows("native_history")
    finally:
        for r in runners:
            slot = r.source.config.slot or f"tidelake_dbz{unique}_{r.name}"  # type: ignore[attr-defined]
            for _ in range(20):
                try:
                    drop_slot(url, slot, slot)
                    break
                except Exception:
                    time.sleep(0.5)
