"""Query results kept for the same query over the same table versions.

Dashboards and BI tools repeat a few queries, often from many viewers at once; over an
unchanged lake each would scan the same files again. A result is reused only when the
query, its parameters and ``as_of`` are the same and every table it reads is at the same
version: a lake table's metadata file (a new one for every commit), the SQLite
database's file stamps. A query that reads a database without such a stamp (PostgreSQL,
MySQL) or calls a function whose value depends on when or how often it runs (``now()``,
``current_date``, ``random()``, ``age(ts)``, ...: DuckDB's volatile functions and its
clock and session functions) is never kept.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Any

import duckdb
import pyarrow as pa

MAX_RESULT_BYTES = 1 << 20
"""Largest result kept: dashboards' aggregates, not bulk reads."""
MAX_TOTAL_BYTES = 16 << 20
"""All kept results of one engine (a query worker's memory limit is 256 MB by default)."""

_CLOCK_AND_SESSION = {
    "now", "today", "current_date", "current_time", "current_timestamp", "current_localtime",
    "current_localtimestamp", "localtime", "localtimestamp", "get_current_time",
    "get_current_timestamp", "transaction_timestamp", "age", "current_setting", "getvariable",
    "txid_current", "current_user", "session_user", "user", "current_role",
}  # fmt: skip
"""Not volatile to DuckDB (the same within a query), but not the same in the next query;
``age(ts)`` measures from today. Bare keywords (``current_date``) parse as column names."""


_parser_lock = threading.Lock()


@functools.cache
def _parser() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


@functools.cache
def _unstable() -> frozenset[str]:
    with _parser_lock:
        volatile = (
            _parser()
            .execute(
                "SELECT DISTINCT function_name FROM duckdb_functions() WHERE stability = 'VOLATILE'"
            )
            .fetchall()
        )
    return frozenset(_CLOCK_AND_SESSION | {str(name).lower() for (name,) in volatile})


def _names(node: Any) -> Iterator[str]:
    """Function names and one-part column names anywhere in DuckDB's parse tree."""
    if isinstance(node, dict):
        if node.get("class") == "FUNCTION":
            yield str(node.get("function_name", "")).lower()
        elif node.get("class") == "COLUMN_REF" and len(node.get("column_names", ())) == 1:
            yield str(node["column_names"][0]).lower()
        for value in node.values():
            yield from _names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _names(value)


@functools.lru_cache(maxsize=256)
def repeatable(query: str) -> bool:
    """True when ``query`` gives the same rows again over the same table versions."""
    try:
        with _parser_lock:
            row = _parser().execute("SELECT json_serialize_sql(?)", [query]).fetchone()
        tree = json.loads(row[0]) if row else {"error": True}
    except (duckdb.Error, TypeError, ValueError):
        return False
    return not tree.get("error") and _unstable().isdisjoint(_names(tree))


class Results:
    """Recently used results by key, within :data:`MAX_TOTAL_BYTES` (least recent dropped)."""

    def __init__(self) -> None:
        self._kept: OrderedDict[Hashable, pa.Table] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable) -> pa.Table | None:
        table = self._kept.get(key)
        if table is not None:
            self._kept.move_to_end(key)
        return table

    def put(self, key: Hashable, table: pa.Table) -> None:
        size = table.nbytes
        if size > MAX_RESULT_BYTES or key in self._kept:
            return
        self._kept[key] = table
        self._bytes += size
        while self._bytes > MAX_TOTAL_BYTES:
            _, dropped = self._kept.popitem(last=False)
            self._bytes -= dropped.nbytes
