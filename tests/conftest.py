"""Shared fixtures. Integration fixtures start real services through ``tidelake.infra``,
the same code users run (`tidelake infra up`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest


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
