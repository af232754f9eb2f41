"""Shared fixtures. Integration fixtures start real services through ``tidelake.infra``,
the same code users run (`tidelake infra up`)."""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


def _blocking_threads() -> list[threading.Thread]:
    """Threads that would keep the interpreter from exiting (idle executor workers do not)."""
    return [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread()
        and not t.daemon
        and not t.name.startswith("ThreadPoolExecutor")
    ]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail the test that leaves a non-daemon thread running: one would keep the test
    process alive after the last test, hanging CI instead of failing it."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in _blocking_threads() if t not in before]
    for t in leaked:
        t.join(10)
    assert not [t for t in leaked if t.is_alive()], f"threads left running: {leaked}"


def pytest_unconfigure(config: pytest.Config) -> None:
    """Last resort: exit even if some library left a non-daemon thread behind."""
    alive = _blocking_threads()
    if alive:
        print(f"\nexiting past non-daemon threads: {alive}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(getattr(config, "_tidelake_exitstatus", 1))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._tidelake_exitstatus = int(exitstatus)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def kafka_url() -> str:
    from tidelake import infra

    return infra.up(["kafka"])["kafka"]


@pytest.fixture(scope="session")
def postgres_server() -> str:
    from tidelake import infra

    return infra.up(["postgres"])["postgres"]


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh database per test on the shared server, dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = postgres_server.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names on shared brokers."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def cassandra_url() -> str:
    """``cassandra://127.0.0.1:9042`` of the shared node (tests use their own keyspaces)."""
    from tidelake import infra

    return infra.up(["cassandra"])["cassandra"]


@pytest.fixture(scope="session")
def mongodb_url() -> str:
    """The shared MongoDB-wire server (FerretDB on SQLite; tests use their own databases)."""
    from tidelake import infra

    return infra.up(["mongodb"])["mongodb"]


@pytest.fixture(scope="session")
def mariadb_server() -> str:
    from tidelake import infra

    return infra.up(["mariadb"])["mariadb"]


@pytest.fixture
def mysql_url(mariadb_server: str) -> Iterator[str]:
    """A fresh database per test on the shared MariaDB, dropped afterwards."""
    from tidelake.db import mysql_connect

    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = mysql_connect(mariadb_server)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    yield f"{mariadb_server.rsplit('/', 1)[0]}/{name}"
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@pytest.fixture
def cql(cassandra_url: str) -> Iterator[Any]:
    """A CQL session on the shared Cassandra node."""
    from cassandra.cluster import Cluster

    host, _, port = cassandra_url.removeprefix("cassandra://").partition(":")
    cluster = Cluster([host], port=int(port))
    session = cluster.connect()
    yield session
    cluster.shutdown()


@pytest.fixture
def mongo(mongodb_url: str, unique: str) -> Iterator[Any]:
    """This test's database (``db_<unique>``) on the shared server, dropped afterwards."""
    import pymongo

    client: Any = pymongo.MongoClient(mongodb_url)
    yield client[f"db_{unique}"]
    client.drop_database(f"db_{unique}")
    client.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    from tidelake import infra

    return infra.up(["s3"])["s3"]


@pytest.fixture
def s3_lake(s3_endpoint: str, unique: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """A fresh bucket; the env the flows (subprocesses) and this process's queries need."""
    from tidelake.infra import s3

    bucket = f"lake-{unique}"
    s3.create_bucket(bucket, s3_endpoint)
    access, secret = s3.credentials()
    env = {
        "TIDELAKE_S3_ENDPOINT": s3_endpoint,
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield {"bucket": bucket, "url": f"s3://{bucket}/lake", "env": env, "endpoint": s3_endpoint}
