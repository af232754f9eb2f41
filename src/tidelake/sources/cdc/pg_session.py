"""Connections and catalog lookups shared by the native PostgreSQL engine and its snapshot."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from tidelake.errors import ConnectorError

T = TypeVar("T")
SLOT_BUSY_SECONDS = 60.0


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection whose text output matches what the converters expect."""
    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as e:
        raise ConnectorError(
            f"cdc: cannot connect to PostgreSQL: {str(e).strip()} "
            "(is it running? `tidelake infra up postgres` starts a local one)"
        ) from e
    conn.execute("SET TimeZone TO 'UTC'")
    conn.execute("SET DateStyle TO 'ISO, MDY'")
    conn.execute("SET IntervalStyle TO 'postgres'")
    conn.execute("SET extra_float_digits TO 1")
    return conn


def retry_busy(fn: Callable[[], T], what: str) -> T:
    """Run ``fn``, waiting while the slot is held by another backend (e.g. a killed run's)."""
    deadline = time.monotonic() + SLOT_BUSY_SECONDS
    while True:
        try:
            return fn()
        except psycopg.errors.ObjectInUse as e:
            if time.monotonic() > deadline:
                raise ConnectorError(
                    f"cdc: {what}: {e} (another process is reading this slot; stop it, or give "
                    "this flow its own 'slot')"
                ) from e
            time.sleep(0.2)


def primary_key(conn: psycopg.Connection[Any], relid: int) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i"
        " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
        (relid,),
    ).fetchall()
    return [r[0] for r in rows]
