"""What a statement from a PostgreSQL client is, before anything runs it.

Clients send session commands no query engine should see (``SET extra_float_digits = 3``,
``BEGIN``, ``SHOW transaction_isolation``): they are answered here, from the session's own
parameters, and never change the engine. Everything else is a query for
``EnginePool.select``: a *system* query when it reads only catalog views (``pg_catalog``,
``information_schema``) or no table at all, with the PostgreSQL spellings DuckDB does not
take (``pg_catalog.`` prefixes, ``OPERATOR(pg_catalog.~)``, ``current_user``) rewritten
before the guard sees it.
"""

from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass

import duckdb
import sqlglot
from sqlglot import exp

from tidelake.errors import QueryError
from tidelake.serve.sql_guard import SYSTEM_RELATIONS

SERVER_VERSION = "16.0"
"""What clients see as the server's PostgreSQL version (drivers pick features by it)."""

HARMLESS_SETTINGS = frozenset(
    {
        "application_name",
        "bytea_output",
        "client_encoding",
        "client_min_messages",
        "datestyle",
        "default_transaction_isolation",
        "default_transaction_read_only",
        "extra_float_digits",
        "idle_in_transaction_session_timeout",
        "intervalstyle",
        "lock_timeout",
        "search_path",
        "standard_conforming_strings",
        "statement_timeout",
        "timezone",
        "transaction_isolation",
        "transaction_read_only",
    }
)
"""Settings a client may ``SET``: kept in the session, shown by ``SHOW``, used by nothing."""


def initial_parameters(user: str, application: str) -> dict[str, str]:
    """The session's parameters at start-up (the reported ones go to the client)."""
    return {
        "server_version": SERVER_VERSION,
        "server_encoding": "UTF8",
        "client_encoding": "UTF8",
        "datestyle": "ISO, MDY",
        "timezone": "UTC",
        "integer_datetimes": "on",
        "standard_conforming_strings": "on",
        "intervalstyle": "postgres",
        "is_superuser": "off",
        "session_authorization": user,
        "application_name": application,
        "transaction_isolation": "read committed",
        "default_transaction_isolation": "read committed",
        "transaction_read_only": "on",
        "default_transaction_read_only": "on",
        "search_path": "lake, db",
        "extra_float_digits": "1",
        "max_identifier_length": "63",
    }


REPORTED = (
    "server_version",
    "server_encoding",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "integer_datetimes",
    "standard_conforming_strings",
    "IntervalStyle",
    "is_superuser",
    "session_authorization",
    "application_name",
)


@dataclass(frozen=True)
class Command:
    """A session command: ``kind`` is its tag (``SET``, ``SHOW``, ``BEGIN`` ...)."""

    kind: str
    name: str = ""
    value: str = ""


_TRANSACTION = {
    "BEGIN": "BEGIN",
    "START": "BEGIN",
    "COMMIT": "COMMIT",
    "END": "COMMIT",
    "ROLLBACK": "ROLLBACK",
    "ABORT": "ROLLBACK",
}
_SET = re.compile(
    r"SET\s+(?:SESSION\s+|LOCAL\s+)?(?P<name>[A-Za-z_][\w.]*)\s*(?:=|\s+TO\s+|\s+)\s*(?P<value>.*?)"
    r"\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)


def _words(sql: str) -> list[str]:
    """The statement's tokens as text, comments left out."""
    try:
        tokens = duckdb.tokenize(sql)
    except duckdb.Error:
        return sql.split()
    data = sql.encode()
    ends = [pos for pos, _ in tokens[1:]] + [len(data)] if tokens else []
    return [
        data[pos:end].decode().strip()
        for (pos, kind), end in zip(tokens, ends, strict=True)
        if kind != duckdb.token_type.comment
    ]


def command(sql: str) -> Command | None:
    """The session command ``sql`` is, or None for a query (``QueryError``: a command that is
    refused, such as ``SET`` of an engine setting)."""
    words = _words(sql)
    if not words:
        return Command("EMPTY")
    first = words[0].upper()
    if first in _TRANSACTION:
        return Command(_TRANSACTION[first])
    if first in ("DISCARD", "DEALLOCATE", "UNLISTEN", "CLOSE"):
        return Command("DISCARD ALL" if first == "DISCARD" else first)
    if first == "RESET":
        name = words[1].lower() if len(words) > 1 else ""
        if name not in HARMLESS_SETTINGS | {"all"}:
            raise QueryError(f"RESET {name or '?'} is not supported: the server's settings stay")
        return Command("RESET")
    if first == "SHOW":
        name = " ".join(w.strip('"') for w in words[1:]).rstrip(";").strip().lower()
        return Command("SHOW", name.replace(" ", "_"))
    if first == "SET":
        return _set(sql, words)
    return None


def _set(sql: str, words: list[str]) -> Command:
    upper = [w.upper() for w in words]
    if upper[1:3] in (["TRANSACTION"], ["TRANSACTION", "ISOLATION"]) or upper[1:3] == [
        "SESSION",
        "CHARACTERISTICS",
    ]:
        return Command("SET")  # transactions are read-only snapshots whatever is asked
    if upper[1:3] == ["TIME", "ZONE"]:
        return Command("SET", "timezone", " ".join(words[3:]).rstrip(";").strip("'\" "))
    match = _SET.match(sql.strip())
    name = match.group("name").lower() if match else ""
    if name not in HARMLESS_SETTINGS:
        raise QueryError(
            f"SET {name or '?'} is not supported: the server's settings are fixed (a client "
            "may set session options such as application_name, DateStyle or search_path)"
        )
    assert match is not None
    return Command("SET", name, match.group("value").strip().strip("'\""))


def split_statements(sql: str) -> list[str]:
    """The statements of a simple-query message, split at ``;`` outside strings and comments."""
    try:
        tokens = duckdb.tokenize(sql)
    except duckdb.Error:
        return [sql]
    data = sql.encode()
    cuts = [
        pos for pos, kind in tokens if kind == duckdb.token_type.operator and data[pos] == ord(";")
    ]
    parts, start = [], 0
    for cut in cuts:
        parts.append(data[start:cut].decode())
        start = cut + 1
    parts.append(data[start:].decode())
    statements = [p for p in parts if _words(p)]
    return statements or [""]


def is_system(sql: str) -> bool:
    """True when ``sql`` reads only catalog views, or no table at all."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except (sqlglot.errors.SqlglotError, RecursionError):
        return False  # the guard refuses it with the reason
    ctes = {cte.alias.lower() for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        schema, name = table.db.lower(), table.name.lower()
        if schema in SYSTEM_RELATIONS or (not schema and name in SYSTEM_RELATIONS["pg_catalog"]):
            continue
        if not schema and name in ctes or not name:
            continue
        return False
    return True


_REWRITES = [
    (re.compile(r"OPERATOR\s*\(\s*pg_catalog\.([^)\s]+)\s*\)", re.I), r"\1"),
    (re.compile(r"\s+COLLATE\s+pg_catalog\.\"?default\"?", re.I), ""),
    (re.compile(r"\bpg_catalog\.", re.I), ""),
    # 'pg_class'::regclass (JDBC's table browser): DuckDB has no regclass type
    (
        re.compile(r"'(?:\w+\.)?(\w+)'\s*::\s*regclass", re.I),
        r"(SELECT oid FROM pg_class WHERE relname = '\1' LIMIT 1)",
    ),
]


_PG_TYPE_FILLS = {"typbasetype": "0::BIGINT", "typtypmod": "-1::INTEGER", "typndims": "0::INTEGER"}


@functools.cache
def _pg_type() -> str:
    """``pg_type`` with PostgreSQL's values where DuckDB's has NULLs: ODBC's SQLColumns reads
    ``typtypmod`` and ``typbasetype`` into integers that cannot be NULL (plain columns, so
    the guard's rules for plain SELECTs apply unchanged)."""
    names = [row[0] for row in duckdb.execute("DESCRIBE pg_catalog.pg_type").fetchall()]
    columns = [f"{_PG_TYPE_FILLS[n]} AS {n}" if n in _PG_TYPE_FILLS else n for n in names]
    return f"SELECT {', '.join(columns)} FROM pg_catalog.pg_type"


def rewrite_system(sql: str, user: str) -> str:
    """A catalog query in the spellings DuckDB accepts, with the session's user."""
    for pattern, replacement in _REWRITES:
        sql = pattern.sub(replacement, sql)
    if re.search(r"\bpg_type\b", sql, re.I):
        sql = _with_pg_type(sql)
    literal = "'" + user.replace("'", "''") + "'"
    sql = re.sub(r"\b(current_user|session_user)\b(?!\s*\()", literal, sql, flags=re.I)
    # bare names resolve to lake tables first (ODBC's SQLColumns filters on current_schema())
    return re.sub(r"\bcurrent_schema\s*\(\s*\)", "'lake'", sql, flags=re.I)


def _with_pg_type(sql: str) -> str:
    """``sql`` reading ``_pg_type()`` wherever it names the ``pg_type`` table."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except (sqlglot.errors.SqlglotError, RecursionError):
        return sql
    fixed = sqlglot.parse_one(_pg_type(), read="duckdb")
    assert isinstance(fixed, exp.Select)
    for table in list(tree.find_all(exp.Table)):
        if table.name.lower() == "pg_type" and table.db.lower() in ("", "pg_catalog"):
            table.replace(fixed.copy().subquery(table.alias or "pg_type"))
    return tree.sql("duckdb")


def placeholders(sql: str) -> int:
    """The highest ``$n`` in ``sql`` (0 when it has none)."""
    numbers = [int(n) for n in re.findall(r"\$(\d+)", sql)]
    return max(numbers, default=0)


_BINARY = {16: "?", 20: "!q", 21: "!h", 23: "!i", 700: "!f", 701: "!d"}
_TEXT_INTS = {20, 21, 23, 26}


def parameter(value: bytes | None, oid: int, binary: bool) -> object:
    """One bound parameter as the Python value DuckDB binds (text, unless typed)."""
    if value is None:
        return None
    if binary:
        if oid == 16:
            return value != b"\0"
        if oid in _BINARY:
            (number,) = struct.unpack(_BINARY[oid], value)
            return number
        if oid == 17:
            return value
        if oid in (25, 1043, 0, 705):
            return value.decode()
        raise QueryError(f"binary parameters of type {oid} are not supported: send them as text")
    text = value.decode()
    if oid in _TEXT_INTS:
        return int(text)
    if oid in (700, 701):
        return float(text)
    if oid == 16:
        return text.lower() in ("t", "true", "1", "on", "yes", "y")
    return text


__all__ = [
    "HARMLESS_SETTINGS",
    "REPORTED",
    "SERVER_VERSION",
    "Command",
    "command",
    "initial_parameters",
    "is_system",
    "parameter",
    "placeholders",
    "rewrite_system",
    "split_statements",
]
