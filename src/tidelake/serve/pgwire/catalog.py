"""Catalog functions PostgreSQL clients call that DuckDB answers differently or not at all,
as macros of the schema-only connection catalog queries run on (``tidelake.serve.engine``)."""

from __future__ import annotations

from tidelake.serve.pgwire import commands

TYPE_NAMES = {
    16: "boolean",
    17: "bytea",
    20: "bigint",
    21: "smallint",
    23: "integer",
    25: "text",
    114: "json",
    700: "real",
    701: "double precision",
    1043: "character varying",
    1082: "date",
    1083: "time without time zone",
    1114: "timestamp without time zone",
    1184: "timestamp with time zone",
    1186: "interval",
    1700: "numeric",
    2950: "uuid",
}
"""PostgreSQL's names (``format_type``) of the types ``pgwire.types`` sends."""


def macros() -> list[str]:
    """``CREATE MACRO`` statements: PostgreSQL's answers for ``format_type``, ``version`` and
    ``pg_get_userbyid``."""
    cases = " ".join(f"WHEN {oid} THEN '{name}'" for oid, name in TYPE_NAMES.items())
    version = f"PostgreSQL {commands.SERVER_VERSION} (tidelake, DuckDB)"
    return [
        f"CREATE MACRO format_type(t, m) AS CASE WHEN t = 1700 AND m > 4 THEN "
        f"'numeric(' || ((m - 4) >> 16) || ',' || ((m - 4) & 65535) || ')' "
        f"ELSE CASE t {cases} ELSE 'text' END END",
        f"CREATE MACRO version() AS '{version}'",
        "CREATE MACRO pg_get_userbyid(id) AS 'tidelake'",
    ]


__all__ = ["TYPE_NAMES", "macros"]
