"""Hostile input: injection, file/env/network access, runaway queries: refused and bounded."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from test_serve_api import ROWS, Lake, build_lake

from tidelake.errors import QueryError
from tidelake.serve import pgwire, sql_guard
from tidelake.serve.api import create_app
from tidelake.serve.engine import Limits, SandboxedEngine

CANARY = "CANARY_7f3a9"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    return build_lake(tmp_path_factory.mktemp("serve-security"))


@pytest.fixture(scope="module")
def client(lake: Lake) -> Iterator[TestClient]:
    with TestClient(create_app(lake.pipeline)) as c:
        yield c


def attacks(lake: Lake) -> list[str]:
    canary = lake.canary
    out = lake.root / "out"
    warehouse = lake.root / ".tidelake" / "lake"
    return [
        # stacked statements and comments
        "SELECT 1; DROP TABLE events",
        "SELECT * FROM events; SELECT 1",
        "SELECT * FROM events /* x */; DELETE FROM events",
        "SELECT 1 /* unterminated",
        "SELECT 1 -- ; DROP TABLE events\n; DROP TABLE events",
        # unknown tables and the engine's internals
        "SELECT * FROM events UNION ALL SELECT * FROM secrets",
        "SELECT * FROM __db_stock",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM sqlite_master",
        "SELECT * FROM pg_catalog.pg_tables",
        "SELECT * FROM system.main.events",
        "SELECT * FROM memory.main.events",
        "SELECT * FROM events AT (VERSION => 1)",
        # DDL / DML / session
        "DROP TABLE events",
        "DELETE FROM events",
        "INSERT INTO events (id) VALUES (1)",
        "UPDATE events SET id = 1",
        "CREATE TABLE x AS SELECT 1",
        "CREATE OR REPLACE VIEW events AS SELECT 1 AS id",
        "CREATE MACRO m() AS 1",
        "CREATE SECRET (TYPE s3, KEY_ID 'x', SECRET 'y')",
        "ALTER TABLE events ADD COLUMN z INT",
        "SELECT 1 INTO t",
        f"COPY (SELECT 1) TO '{out}.csv'",
        f"COPY events TO '{out}.parquet' (FORMAT parquet)",
        f"ATTACH '{out}.db' AS x",
        "DETACH memory",
        "INSTALL httpfs",
        "LOAD httpfs",
        "FORCE INSTALL httpfs FROM community",
        "SET memory_limit = '1TB'",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "PRAGMA enable_profiling",
        "PRAGMA show_tables",
        "CALL pragma_version()",
        f"EXPORT DATABASE '{out}'",
        f"IMPORT DATABASE '{out}'",
        "CHECKPOINT",
        "USE lake",
        "BEGIN TRANSACTION",
        "VACUUM",
        "DESCRIBE events",
        "SUMMARIZE events",
        "SHOW TABLES",
        "EXPLAIN SELECT 1",
        "EXPLAIN ANALYZE SELECT * FROM events",
        "PIVOT events ON kind USING count(*)",
        # files, environment, settings, network
        "SELECT getenv('HOME')",
        "SELECT current_setting('home_directory')",
        "SELECT * FROM duckdb_settings()",
        "SELECT * FROM duckdb_tables()",
        "SELECT * FROM duckdb_secrets()",
        "SELECT * FROM duckdb_functions()",
        "SELECT * FROM query_table('events')",
        "SELECT * FROM query('SELECT 1')",
        f"SELECT * FROM read_text('{canary}')",
        f"SELECT * FROM READ_TEXT('{canary}')",
        f"SELECT * FROM main.read_text('{canary}')",
        f"SELECT * FROM read_csv('{canary}')",
        f"SELECT * FROM read_csv_auto('{canary}')",
        f"SELECT * FROM read_blob('{canary}')",
        f"SELECT * FROM read_json('{canary}')",
        f"SELECT * FROM read_parquet('{canary}')",
        f"SELECT * FROM sniff_csv('{canary}')",
        f"SELECT * FROM parquet_metadata('{canary}')",
        "SELECT * FROM glob('/etc/*')",
        f"SELECT * FROM glob('{warehouse}/**')",
        f"SELECT * FROM '{canary}'",
        f'SELECT * FROM "{canary}"',
        f"SELECT * FROM events, '{canary}'",
        f"SELECT * FROM '{warehouse}/**/*.parquet'",
        "SELECT * FROM 'https://example.com/data.csv'",
        f"WITH x AS (SELECT * FROM read_text('{canary}')) SELECT * FROM x",
        f"SELECT (SELECT content FROM read_text('{canary}'))",
        f"SELECT * FROM events WHERE id IN (SELECT 1 FROM read_csv('{canary}'))",
        f"SELECT * FROM events e JOIN LATERAL read_text('{canary}') r ON true",
        f'SELECT * FROM (WITH "{canary}" AS (SELECT 1) SELECT * FROM "{canary}") a, "{canary}"',
        "SELECT json_serialize_sql('SELECT 1')",
        "SELECT pg_sleep(100)",
        "SELECT sleep_ms(100000)",
        "SELECT write_log('x')",
        "SELECT error('x')",
        "SELECT nextval('s')",
        "SELECT system.main.version()",
        "SELECT version()",
        # a CTE's name is not in scope inside its own body (issue 10)
        "WITH pg_settings AS (SELECT * FROM pg_settings) SELECT * FROM pg_settings",
        "WITH duckdb_settings AS (SELECT * FROM duckdb_settings) SELECT * FROM duckdb_settings",
        f'WITH "{canary}" AS (SELECT * FROM "{canary}") SELECT * FROM "{canary}"',
        f'WITH "{warehouse}/**/*.parquet" AS (SELECT * FROM "{warehouse}/**/*.parquet") '
        f'SELECT * FROM "{warehouse}/**/*.parquet"',
        f'WITH "{warehouse}/**/*.json" AS (SELECT * FROM "{warehouse}/**/*.json") SELECT 1',
        "WITH x AS (SELECT * FROM x) SELECT * FROM x",
        "WITH x AS (SELECT 1 AS n UNION ALL SELECT n FROM x) SELECT * FROM x",
        "WITH a AS (SELECT * FROM b), b AS (SELECT * FROM pg_settings) SELECT * FROM a",
        "WITH RECURSIVE a AS (SELECT 1 AS n UNION ALL SELECT * FROM b), b AS (SELECT 1) "
        "SELECT * FROM a",
        # nesting deeper than the parsers can recurse (was a RecursionError, a 500)
        "SELECT " + "(" * 250 + "1" + ")" * 250,
        "SELECT " + "abs(" * 3000 + "1" + ")" * 3000,
        "SELECT * FROM " + "(SELECT * FROM " * 300 + "events" + ") t" * 300,
        "SELECT " + "+".join(["1"] * 5000),
        "SELECT " + "NOT " * 3000 + "true",
        "SELECT " + "[" * 2000 + "]" * 2000,
    ]


ANSWERED_OVER_PGWIRE = {
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM pg_catalog.pg_tables",
    "SELECT version()",
    "BEGIN TRANSACTION",
    "SELECT * FROM events; SELECT 1",
}
"""What a PostgreSQL client may ask on connect: answered from the schema-only catalog (names
and types, no rows) or acknowledged without effect; and two reads in one simple query, which
run one by one, each through the guard (the other stacked attacks fail at their second)."""

Door = Callable[[str], tuple[bool, str]]
"""Run one statement through a door: (refused, what the client was told)."""


@pytest.fixture(scope="module", params=["api", "pgwire"])
def door(request: pytest.FixtureRequest, lake: Lake, client: TestClient) -> Iterator[Door]:
    """``POST /api/query``, or the PostgreSQL wire endpoint (psycopg, autocommit)."""
    if request.param == "api":

        def post(sql: str) -> tuple[bool, str]:
            r = client.post("/api/query", json={"sql": sql})
            assert r.status_code in (200, 400), (sql, r.status_code, r.text)
            refused = r.status_code == 400
            return refused, r.json()["detail"] if refused else str(r.json()["rows"])

        yield post
        return
    running = pgwire.start(lake.pipeline, "127.0.0.1", 0, login=False)
    con = psycopg.connect(f"host=127.0.0.1 port={running.port} user=x dbname=x", autocommit=True)

    def execute(sql: str) -> tuple[bool, str]:
        try:
            cur = con.execute(sql.encode())
            return False, str(cur.fetchall() if cur.description else cur.statusmessage)
        except psycopg.Error as e:
            return True, str(e)
        finally:  # BEGIN TRANSACTION opened one: the next attack starts outside it
            if con.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                con.execute("ROLLBACK")

    yield execute
    con.close()
    running.stop()


def test_guard_refuses_every_attack(
    lake: Lake, client: TestClient, door: Door, request: pytest.FixtureRequest
) -> None:
    pgwire_door = "pgwire" in request.node.callspec.id
    before = door("SELECT count(*) FROM events")
    for sql in attacks(lake):
        refused, told = door(sql)
        assert refused != (pgwire_door and sql in ANSWERED_OVER_PGWIRE), (sql, told)
        assert CANARY not in told and str(lake.root) not in told, (sql, told)
        assert "Traceback" not in told and (not refused or len(told) < 400)
    assert door("SELECT count(*) FROM events") == before and str(ROWS) in before[1]
    assert sorted(p.name for p in lake.root.iterdir()) == [".tidelake", "canary.csv"]
    assert [t["name"] for t in client.get("/api/tables").json()] == ["events", "stock"]


def test_guard_accepts_ordinary_analytics(lake: Lake, client: TestClient) -> None:
    queries = [
        "FROM events SELECT kind, count(*) GROUP BY ALL ORDER BY ALL",
        "SELECT date_trunc('hour', ts) AS h, avg(amount) FROM events GROUP BY 1 ORDER BY 1",
        "SELECT kind, row_number() OVER (PARTITION BY kind ORDER BY id) AS rn FROM lake.events",
        "SELECT id, lag(amount) OVER w, coalesce(NULL, 1) FROM events WINDOW w AS (ORDER BY id)",
        "SELECT id FROM events QUALIFY row_number() OVER (PARTITION BY kind ORDER BY id) = 1",
        "SELECT list_transform([1, 2], lambda x: x * 2), {'a': 1}.a, [1, 2][1], 'a' || 'b'",
        "SELECT 'ab' LIKE 'a%', 'ab' ILIKE 'A%', 'ab' SIMILAR TO 'a.', 1 BETWEEN 0 AND 2",
        "SELECT CASE WHEN amount > 1 THEN 'big' END, amount::INTEGER, EXTRACT(year FROM ts) "
        "FROM events",
        "SELECT * FROM events e JOIN db.stock s ON e.user = s.sku",
        "SELECT * FROM (SELECT id FROM events) t WHERE EXISTS (SELECT 1 FROM stock)",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
        "SELECT * FROM r",
        "SELECT unnest([1, 2, 3]) AS x",
        "SELECT * FROM range(5) t(x)",
        "SELECT id FROM events INTERSECT SELECT id FROM events EXCEPT SELECT 1",
        "SELECT * EXCLUDE (ts) FROM events USING SAMPLE 5 ROWS",
        "SELECT COLUMNS('am.*') FROM events",
        "SELECT json_extract('{\"a\": 1}', '$.a'), regexp_replace(user, 'u', 'x') FROM events",
        "VALUES (1, 'a'), (2, 'b')",
    ]
    for sql in queries:
        r = client.post("/api/query", json={"sql": sql})
        assert r.status_code == 200, (sql, r.text)


def test_structured_rows_never_paste_values(lake: Lake, client: TestClient) -> None:
    evil = "' OR '1'='1"
    for column in ("kind", "user"):
        r = client.get(
            "/api/tables/events/rows",
            params={"where": json.dumps([{"column": column, "op": "=", "value": evil}])},
        )
        assert r.status_code == 200 and r.json()["rows"] == [], "the value is data, not SQL"
    like = client.get(
        "/api/tables/events/rows",
        params={"where": json.dumps([{"column": "kind", "op": "like", "value": "%' OR 1=1 --"}])},
    )
    assert like.json()["rows"] == []
    typed = client.get(
        "/api/tables/events/rows",
        params={"where": json.dumps([{"column": "id", "op": "=", "value": "1 OR 1=1"}])},
    )
    assert typed.status_code == 422, "a string that is not an integer is a conversion error"
    for column in ('id" = 1 OR "1', "id; DROP TABLE events", "id) OR (1=1", "*"):
        r = client.get(
            "/api/tables/events/rows",
            params={"where": json.dumps([{"column": column, "op": "=", "value": 1}])},
        )
        assert r.status_code == 422 and "unknown column" in r.json()["detail"]
    for order in ('id"; DROP TABLE events; --', "1", "random()"):
        assert client.get("/api/tables/events/rows", params={"order_by": order}).status_code == 422
    for table in ("events; DROP TABLE events", 'events" --', "read_text('x')", "__db_stock"):
        assert client.get(f"/api/tables/{table}/rows").status_code == 404
    assert client.post("/api/query", json={"sql": "SELECT count(*) FROM events"}).json()[
        "rows"
    ] == [[ROWS]]


def test_engine_itself_is_sandboxed(lake: Lake) -> None:
    """Even SQL that skipped the guard (run on the engine's own connection) reads no file,
    not even the lake's, writes nothing into the lake, and cannot unlock the connection."""
    engine = SandboxedEngine(lake.pipeline, Limits())
    warehouse = lake.root / ".tidelake" / "lake"
    data_file = next(warehouse.rglob("*.parquet"))
    metadata_file = next(warehouse.rglob("*.metadata.json"))
    before = sorted(warehouse.rglob("*"))
    try:
        assert engine.run("SELECT count(*) AS n FROM events", None, None, None).num_rows == 1
        raw = [
            f"SELECT * FROM read_parquet('{data_file}')",
            f"SELECT * FROM '{data_file}'",
            f"SELECT * FROM read_parquet('{warehouse}/**/*.parquet')",
            f"SELECT * FROM read_text('{metadata_file}')",
            f"SELECT * FROM glob('{warehouse}/**')",
            f"COPY (SELECT 1) TO '{warehouse}/out.csv'",
            f"COPY lake.events TO '{data_file.parent}/00000-9-evil.parquet' (FORMAT parquet)",
            f"ATTACH '{warehouse}/x.db' AS x",
            f"EXPORT DATABASE '{warehouse}/export'",
            "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
            "SELECT * FROM main.__lake_events, read_blob('/etc/hostname')",
            f"SELECT * FROM read_text('{lake.canary}')",
            f"SELECT * FROM '{lake.canary}'",
            "SELECT * FROM glob('/etc/*')",
            f"COPY (SELECT 1) TO '{lake.root}/out.csv'",
            f"ATTACH '{lake.root}/x.db'",
            "INSTALL httpfs",
            "LOAD httpfs",
            "SET enable_external_access = true",
            "SET lock_configuration = false",
            "SET memory_limit = '1TB'",
            "SET allowed_directories = ['/']",
        ]
        for sql in raw:
            with pytest.raises(Exception) as info:
                engine._con.execute(sql).fetchall()
            assert CANARY not in str(info.value)
        assert sorted(warehouse.rglob("*")) == before  # nothing written into the lake
        for sql in (
            f"COPY (SELECT 1) TO '{warehouse}/out.csv'",
            f"ATTACH '{warehouse}/x.db' AS x",
            f"EXPORT DATABASE '{warehouse}/export'",
            "SET threads = 1",
        ):
            for params in (None, []):  # the SQL path and the parameter path
                with pytest.raises(QueryError, match="only a single read-only SELECT"):
                    engine.run(sql, params, None, None)
        assert not [p for p in warehouse.rglob("*") if p.name in ("out.csv", "x.db", "export")]
        assert engine.settings()["enable_external_access"] == "false"
        assert not (lake.root / "out.csv").exists() and not (lake.root / "x.db").exists()
        assert engine.run("SELECT count(*) AS n FROM events", None, None, None).to_pylist() == [
            {"n": ROWS}
        ]
    finally:
        engine.close()


def test_runaway_query_is_interrupted_and_engine_recovers(lake: Lake) -> None:
    app = create_app(lake.pipeline, limits=Limits(timeout=1.0, engines=1))
    with TestClient(app) as c:
        c.post("/api/query", json={"sql": "SELECT 1 FROM events LIMIT 1"})
        runaway = (
            "SELECT count(*) FROM events a, events b, events c, events d, events e "
            "WHERE a.amount + b.amount + c.amount + d.amount + e.amount > -1"
        )
        for sql in (runaway, "SELECT count(*) FROM range(1000000000000) a, range(1000000) b"):
            r, elapsed = _until_an_engine_answers(c, sql)
            assert r.status_code == 408, r.text
            assert "time limit" in r.json()["detail"]
            assert elapsed < 6, f"interrupted after {elapsed:.1f}s"
        ok, _ = _until_an_engine_answers(c, "SELECT count(*) FROM events")
        assert ok.status_code == 200 and ok.json()["rows"] == [[ROWS]]


def _until_an_engine_answers(c: TestClient, sql: str) -> tuple[Any, float]:
    """The answer and its time, retrying 503s (a killed engine's replacement is starting)."""
    for _ in range(300):
        started = time.monotonic()
        r = c.post("/api/query", json={"sql": sql})
        if r.status_code != 503:
            return r, time.monotonic() - started
        time.sleep(float(r.headers["retry-after"]) / 10)
    raise AssertionError("no engine came back")


def test_memory_limit_fails_the_query_not_the_server(lake: Lake) -> None:
    app = create_app(lake.pipeline, limits=Limits(memory_limit="64MB", timeout=30))
    with TestClient(app) as c:
        r = c.post(
            "/api/query",
            json={
                "sql": "SELECT count(DISTINCT (a.range, repeat('x', 200))) FROM range(3000000) a"
            },
        )
        assert r.status_code == 422, r.text
        assert "memory" in r.json()["detail"].lower()
        assert c.post("/api/query", json={"sql": "SELECT 42"}).json()["rows"] == [[42]]


def test_guard_scopes_cte_names() -> None:
    catalog = sql_guard.Catalog(frozenset({"events"}), frozenset())
    sql_guard.check("WITH a AS (SELECT 1) SELECT * FROM a, events", catalog)
    with pytest.raises(sql_guard.SQLRefused, match="unknown table 'a'"):
        sql_guard.check("SELECT * FROM (WITH a AS (SELECT 1) SELECT * FROM a) x, a", catalog)
    with pytest.raises(QueryError):
        sql_guard.check("SELECT * FROM db.events", catalog)
    sql_guard.check(
        "WITH events AS (SELECT * FROM events WHERE id > 1) SELECT * FROM events", catalog
    )
    sql_guard.check("WITH b AS (SELECT 1 AS n), a AS (SELECT * FROM b) SELECT * FROM a", catalog)
    for sql in (
        "WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets",
        "WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a",
        "WITH r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
    ):
        with pytest.raises(sql_guard.SQLRefused, match="unknown table"):
            sql_guard.check(sql, catalog)


def test_error_bodies_hide_paths(lake: Lake, client: TestClient) -> None:
    r = client.post("/api/query", json={"sql": "SELECT CAST('x' AS INTEGER) FROM events"})
    assert r.status_code == 422
    r = client.post("/api/query", json={"sql": "SELECT nope FROM events"})
    assert r.status_code == 422 and "nope" in r.json()["detail"]
    assert str(lake.root) not in r.text and "Traceback" not in r.text
