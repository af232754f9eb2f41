"""The PostgreSQL wire endpoint with real clients: psql, psycopg 3, the PostgreSQL JDBC driver,
psqlODBC through unixODBC's isql.

psql lists the tables, reads columns with their types and runs a GROUP BY over 1M lake rows;
psycopg reads results in text and in binary format alike; JDBC runs a prepared statement
past the point where the driver switches to binary results, and browses the tables; isql lists
tables and columns with their ODBC types; JDBC and isql run the GROUP BY too. Logins
are SCRAM-SHA-256 against the pipeline's users, and a wrong or missing password is refused.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pytest

from tidelake.config import Pipeline, loads
from tidelake.errors import ConfigError
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.serve import pgwire
from tidelake.serve.auth import Credentials
from tidelake.serve.server import pg_login
from tidelake.serve.users import Users
from tidelake.sinks.lake import LakeSink, LakeSinkConfig

ROWS = 1_000_000
PASSWORD = "correct horse battery"
PSQL = shutil.which("psql") or "/usr/bin/psql"
REGIONS = ["north", "south", "east", "west"]


@dataclass
class Endpoint:
    pipeline: Pipeline
    port: int

    def dsn(self, user: str = "analyst", password: str | None = None) -> str:
        extra = f" password='{password}'" if password is not None else ""
        return f"host=127.0.0.1 port={self.port} user={user} dbname=shop{extra}"


def sales(n: int) -> pa.Table:
    i = np.arange(n)
    return pa.table(
        {
            "id": pa.array(i, pa.int64()),
            "ts": pa.array(
                np.datetime64("2024-05-01T00:00:00", "us") + i * np.timedelta64(1, "s"),
                pa.timestamp("us"),
            ),
            "region": pa.DictionaryArray.from_arrays(
                pa.array(i % 4, pa.int32()), pa.array(REGIONS)
            ).dictionary_decode(),
            "qty": pa.array(i % 10, pa.int32()),
            "price": pa.array((i % 100) * 0.25, pa.float64()),
            "paid": pa.array(i % 2 == 0),
        }
    )


def _no_broker() -> None:
    raise AssertionError("the lake sink needs no broker")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = tmp_path_factory.mktemp("pgwire")
    pipeline = loads("name: shop\nflows: {}\n", root / "pipeline.yaml")
    ctx = FlowContext("load", pipeline, FlowMetrics("load"), _no_broker)  # type: ignore[arg-type]
    sink = LakeSink(LakeSinkConfig.model_validate({"type": "lake", "table": "sales"}))
    sink.open(ctx)
    sink.write(sales(ROWS), {})
    sink.close()
    db = sqlite3.connect(pipeline.state_dir / "pipeline.db")
    db.execute("CREATE TABLE products (sku TEXT, stock INTEGER)")
    db.executemany("INSERT INTO products VALUES (?, ?)", [("apple", 3), ("pear", 5)])
    db.commit()
    db.close()
    return pipeline


@pytest.fixture(scope="module")
def endpoint(pipeline: Pipeline) -> Iterator[Endpoint]:
    """Loopback and no users: no login, as the HTTP API."""
    running = pgwire.start(pipeline, "127.0.0.1", 0, login=False)
    yield Endpoint(pipeline, running.port)
    running.stop()


def psql(endpoint: Endpoint, *commands: str, password: str | None = None) -> str:
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    env.pop("PGPASSWORD", None)
    if password is not None:
        env["PGPASSWORD"] = password
    args = [PSQL, "-X", "-w", "-A", "-t", "-F", "|", endpoint.dsn(), "-v", "ON_ERROR_STOP=1"]
    script = "".join(c + "\n" for c in commands)  # typed in, as at psql's prompt
    done = subprocess.run(
        [*args, "-f", "-"], input=script, capture_output=True, text=True, env=env, timeout=60
    )
    if done.returncode:
        raise AssertionError(f"psql failed ({done.returncode}): {done.stderr}")
    return done.stdout


EXPECTED_GROUPS = [(r, ROWS // 4) for r in REGIONS]


def test_psql_lists_tables_describes_columns_and_groups(endpoint: Endpoint) -> None:
    tables = psql(endpoint, r"\dt").split()
    assert tables == ["db|products|table|tidelake", "lake|sales|table|tidelake"]
    described = psql(endpoint, r"SELECT * FROM lake.sales \gdesc").split("\n")
    assert described[:6] == [
        "id|bigint",
        "ts|timestamp without time zone",
        "region|text",
        "qty|integer",
        "price|double precision",
        "paid|boolean",
    ]
    grouped = psql(
        endpoint, "SELECT region, count(*) FROM lake.sales GROUP BY region ORDER BY region"
    )
    assert grouped.split() == sorted(f"{r}|{n}" for r, n in EXPECTED_GROUPS)
    rows = psql(endpoint, "SELECT id, ts, paid, price FROM sales WHERE id IN (1, 2) ORDER BY id")
    assert rows.split("\n")[:2] == ["1|2024-05-01 00:00:01|f|0.25", "2|2024-05-01 00:00:02|t|0.5"]


def test_psycopg_server_side_parameters_and_types(endpoint: Endpoint) -> None:
    with psycopg.connect(endpoint.dsn()) as con:
        listed = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables ORDER BY 1, 2"
        ).fetchall()
        assert listed == [("db", "products"), ("lake", "sales")]
        cur = con.cursor()
        units = {"north": 1_000_000, "south": 1_250_000}  # qty = id % 10, region = id % 4
        for region in units:  # prepare=True: a named statement, parsed once
            cur.execute(
                "SELECT region, count(*) AS n, sum(qty) AS units FROM lake.sales "
                "WHERE region = %s AND qty >= %s GROUP BY region",
                [region, 0],
                prepare=True,
            )
            assert cur.fetchall() == [(region, ROWS // 4, units[region])]
        cur.execute("SELECT * FROM lake.sales WHERE id = %s", [3])
        assert [d.name for d in cur.description] == ["id", "ts", "region", "qty", "price", "paid"]
        assert cur.fetchone() == (3, datetime(2024, 5, 1, 0, 0, 3), "west", 3, 0.75, False)
        joined = con.execute(
            "SELECT p.sku, p.stock FROM db.products p WHERE p.stock > %s", [4]
        ).fetchall()
        assert joined == [("pear", 5)]
        version = con.execute("SELECT version()").fetchone()
        assert version is not None and version[0].startswith("PostgreSQL 16")
        assert con.execute("SHOW transaction_isolation").fetchone() == ("read committed",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not allowed"):
            con.execute("SELECT * FROM read_text('/etc/passwd')")
        con.rollback()  # psycopg opened a transaction: the error failed it until ROLLBACK
        assert con.execute("SELECT 1").fetchone() == (1,)


def test_psycopg_binary_results_equal_text_ones(endpoint: Endpoint) -> None:
    sql = (
        "SELECT id, ts, paid, price, region, qty, CAST(price AS DECIMAL(10, 2)) AS amount,"
        " CAST(ts AS DATE) AS day, CAST(ts AS TIME) AS t, CAST(ts AS TIMESTAMPTZ) AS tz,"
        " CAST(NULL AS BIGINT) AS nothing FROM lake.sales WHERE id BETWEEN 0 AND 99 ORDER BY id"
    )
    with psycopg.connect(endpoint.dsn()) as conn:
        text = conn.execute(sql).fetchall()
        binary = conn.cursor(binary=True).execute(sql).fetchall()
    assert len(binary) == 100 and binary == text
    assert binary[3][6] == Decimal("0.75") and binary[3][7] == date(2024, 5, 1)


JDBC_DRIVER = "org.postgresql:postgresql:42.7.8"


def test_jdbc_prepared_statements_and_table_browser(endpoint: Endpoint) -> None:
    from tidelake.infra import _java, _maven, cache_root

    lib = _maven.copy_dependencies(
        cache_root() / "pgjdbc-42.7.8", [JDBC_DRIVER], what="PostgreSQL JDBC driver"
    )
    url = f"jdbc:postgresql://127.0.0.1:{endpoint.port}/shop?user=analyst"
    source = Path(__file__).parent / "jdbc" / "JdbcCheck.java"
    done = subprocess.run(
        [_java.java(), "-Duser.timezone=UTC", "-cp", f"{lib}/*", str(source), url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rows = [line for line in lines if not line.startswith(("table|", "column|", "group|"))]
    assert rows == [
        f"{i}|2024-05-01 00:00:0{i}.0|{str(i % 2 == 0).lower()}|{i * 0.25}|{REGIONS[i % 4]}|{i}"
        f"|{i * 0.25:.2f}|2024-05-01"
        for i in range(1, 9)
    ]  # the 5th to 8th executions came back in binary format, decoded alike
    assert [line for line in lines if line.startswith("column|")] == [
        f"column|{name}|{kind}"
        for name, kind in [("id", "int8"), ("ts", "timestamp"), ("paid", "bool"),
                           ("price", "float8"), ("region", "text"), ("qty", "int4"),
                           ("amount", "numeric"), ("day", "date")]
    ]  # fmt: skip
    groups = [line for line in lines if line.startswith("group|")]
    assert groups == [f"group|{r}|{n}" for r, n in sorted(EXPECTED_GROUPS)]
    assert {"table|lake.sales", "table|db.products"} <= set(lines)


def test_odbc_isql_lists_tables_columns_and_groups(endpoint: Endpoint, tmp_path: Path) -> None:
    """psqlODBC through unixODBC's isql, what Power BI's PostgreSQL connector is built on."""
    driver = next(Path("/usr/lib").glob("*/odbc/psqlodbcw.so"), None)
    assert driver is not None and shutil.which("isql"), "apt-get install unixodbc odbc-postgresql"
    (tmp_path / "odbcinst.ini").write_text(f"[PostgreSQL Unicode]\nDriver={driver}\n")
    (tmp_path / "odbc.ini").write_text(
        f"[tidelake]\nDriver=PostgreSQL Unicode\nServername=127.0.0.1\nPort={endpoint.port}\n"
        "Database=shop\nUsername=analyst\n"
    )
    env = os.environ | {"ODBCSYSINI": str(tmp_path), "ODBCINI": str(tmp_path / "odbc.ini")}

    def isql(line: str) -> list[str]:
        done = subprocess.run(
            ["isql", "-v", "-b", "-d|", "tidelake", "analyst"],
            input=line + "\n", capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0 and "ERROR" not in done.stdout, done.stdout + done.stderr
        return done.stdout.splitlines()

    assert {"shop|lake|sales|TABLE|", "shop|db|products|TABLE|"} <= set(isql("help"))
    columns = [line.split("|")[3:6] for line in isql("help sales")]  # SQLColumns
    assert columns == [  # ODBC SQL types: BIGINT, TIMESTAMP, VARCHAR, INTEGER, FLOAT, and
        ["id", "-5", "int8"],  # booleans as VARCHAR, psqlODBC's default (BoolsAsChar)
        ["ts", "11", "timestamp"],
        ["region", "12", "varchar"],
        ["qty", "4", "int4"],
        ["price", "6", "float8"],
        ["paid", "12", "bool"],
    ]
    grouped = isql("SELECT region, count(*) AS n FROM lake.sales GROUP BY region ORDER BY region")
    assert grouped == [f"{r}|{n}" for r, n in sorted(EXPECTED_GROUPS)]


def test_cancel_stops_a_running_query(endpoint: Endpoint) -> None:
    with psycopg.connect(endpoint.dsn(), autocommit=True) as con:
        timer = threading.Timer(1.0, con.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            con.execute("SELECT count(*) FROM range(100000000000) t(x) WHERE x % 7 = 3")
        assert time.monotonic() - started < 5  # well before the 10 s time limit
        timer.join()
        assert con.execute("SELECT count(*) FROM lake.sales").fetchone() == (ROWS,)


@pytest.fixture(scope="module")
def secured(pipeline: Pipeline) -> Iterator[Endpoint]:
    """With users: SCRAM-SHA-256 logins (what a bind beyond loopback requires)."""
    Users(pipeline).add("analyst", "viewer", PASSWORD)
    assert pg_login("0.0.0.0", Credentials(pipeline, None))
    running = pgwire.start(pipeline, "127.0.0.1", 0, login=True)
    yield Endpoint(pipeline, running.port)
    running.stop()
    Users(pipeline).remove("analyst")


def test_logins_need_the_password(secured: Endpoint) -> None:
    assert psql(secured, "SELECT count(*) FROM lake.sales", password=PASSWORD).split() == [
        str(ROWS)
    ]
    with psycopg.connect(secured.dsn(password=PASSWORD)) as con:
        assert con.execute("SELECT current_user").fetchone() == ("analyst",)
    for password in ("wrong password!", "", None):
        with pytest.raises(AssertionError, match="password authentication failed|no password"):
            psql(secured, "SELECT 1", password=password)
    for dsn in (secured.dsn(password="nope"), secured.dsn("mallory", PASSWORD)):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(dsn)


def test_beyond_loopback_without_users_is_refused(tmp_path: Path) -> None:
    pipeline = loads("name: empty\nflows: {}\n", tmp_path / "pipeline.yaml")
    with pytest.raises(ConfigError, match="without users"):
        pg_login("0.0.0.0", Credentials(pipeline, None))
    assert not pg_login("127.0.0.1", Credentials(pipeline, None))
