"""One mapping from Arrow types to the column types each store creates (SQLite, PostgreSQL,
MySQL/MariaDB, Cassandra), used when a sink creates or widens a table."""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

Store = Literal["sqlite", "postgresql", "mysql", "cassandra"]
_STORES: tuple[Store, ...] = ("sqlite", "postgresql", "mysql", "cassandra")

# kind: sqlite, postgresql, mysql, cassandra
_TYPES: dict[str, tuple[str, str, str, str]] = {
    "boolean": ("INTEGER", "BOOLEAN", "BOOLEAN", "boolean"),
    "int8": ("INTEGER", "BIGINT", "BIGINT", "tinyint"),
    "int16": ("INTEGER", "BIGINT", "BIGINT", "smallint"),
    "int32": ("INTEGER", "BIGINT", "BIGINT", "int"),
    "int64": ("INTEGER", "BIGINT", "BIGINT", "bigint"),
    "float32": ("REAL", "DOUBLE PRECISION", "DOUBLE", "float"),
    "float64": ("REAL", "DOUBLE PRECISION", "DOUBLE", "double"),
    "decimal": ("REAL", "NUMERIC", "DECIMAL(38, 9)", "double"),
    "timestamp": ("TEXT", "TIMESTAMP", "DATETIME(6)", "timestamp"),
    "timestamptz": ("TEXT", "TIMESTAMPTZ", "DATETIME(6)", "timestamp"),
    "date": ("TEXT", "DATE", "DATE", "date"),
    "binary": ("BLOB", "BYTEA", "LONGBLOB", "blob"),
    "nested": ("TEXT", "JSONB", "LONGTEXT", "text"),  # nested values as JSON (text)
    "text": ("TEXT", "TEXT", "LONGTEXT", "text"),
}


def _kind(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_int8(t):
        return "int8"
    if pa.types.is_int16(t) or pa.types.is_uint8(t):
        return "int16"
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return "int32"
    if pa.types.is_integer(t):
        return "int64"
    if pa.types.is_float32(t):
        return "float32"
    if pa.types.is_floating(t):
        return "float64"
    if pa.types.is_decimal(t):
        return "decimal"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"  # type: ignore[attr-defined]
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_nested(t):
        return "nested"
    return "text"


def column_type(t: pa.DataType, store: Store) -> str:
    """The column type a new column of Arrow type ``t`` gets in ``store``."""
    return _TYPES[_kind(t)][_STORES.index(store)]
