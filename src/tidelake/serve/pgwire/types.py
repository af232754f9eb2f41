"""Arrow results as PostgreSQL sees them: type OIDs, and columns in text or binary format.

Each column becomes one Arrow binary array of PostgreSQL's text representation
(``t``/``f``, ``Infinity``, ``2024-01-01 10:00:00+00``, JSON for nested values) with pyarrow
compute (and DuckDB's ``to_json``), or of its binary representation when the client asks
for it (JDBC does, for prepared statements): fixed-size values as big-endian numpy
arrays, text as is. ``data_rows`` then lays every row out as a ``DataRow`` message with
numpy, so no Python code runs per row or per value -- except for ``numeric`` in binary
format (base-10000 digit groups), which is encoded value by value.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tidelake.formats.json import nested_to_json


@dataclass(frozen=True)
class PgType:
    oid: int
    size: int
    """``typlen``: bytes of a fixed-size value, -1 for variable length."""
    modifier: int = -1


BOOL = PgType(16, 1)
BYTEA = PgType(17, -1)
INT8 = PgType(20, 8)
INT2 = PgType(21, 2)
INT4 = PgType(23, 4)
TEXT = PgType(25, -1)
JSON = PgType(114, -1)
FLOAT4 = PgType(700, 4)
FLOAT8 = PgType(701, 8)
VARCHAR = PgType(1043, -1)
DATE = PgType(1082, 4)
TIME = PgType(1083, 8)
TIMESTAMP = PgType(1114, 8)
TIMESTAMPTZ = PgType(1184, 8)
INTERVAL = PgType(1186, 16)
NUMERIC = PgType(1700, -1)
UUID = PgType(2950, 16)


def pg_type(t: pa.DataType) -> PgType:
    """The PostgreSQL type a column of Arrow type ``t`` is sent as."""
    if pa.types.is_boolean(t):
        return BOOL
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return INT2
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return INT4
    if pa.types.is_int64(t) or pa.types.is_uint32(t):
        return INT8
    if pa.types.is_integer(t):
        return NUMERIC
    if pa.types.is_float16(t) or pa.types.is_float32(t):
        return FLOAT4
    if pa.types.is_float64(t):
        return FLOAT8
    if pa.types.is_decimal(t):
        assert isinstance(t, pa.Decimal128Type | pa.Decimal256Type)
        return PgType(NUMERIC.oid, -1, ((t.precision << 16) | t.scale) + 4)
    if pa.types.is_date(t):
        return DATE
    if pa.types.is_timestamp(t):
        assert isinstance(t, pa.TimestampType)
        return TIMESTAMPTZ if t.tz else TIMESTAMP
    if pa.types.is_time(t):
        return TIME
    if pa.types.is_duration(t) or pa.types.is_interval(t):
        return INTERVAL
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return BYTEA
    if pa.types.is_nested(t):
        return JSON
    return TEXT


_FLOAT_WORDS = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}


def text_column(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``column`` in PostgreSQL's text format, as one ``large_binary`` array (nulls kept)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    t = array.type
    if pa.types.is_dictionary(t):
        array = array.dictionary_decode()
        t = array.type
    if pa.types.is_boolean(t):
        text = pc.if_else(array, "t", "f")
    elif pa.types.is_floating(t):
        text = pc.cast(array, pa.string())
        for word, pg in _FLOAT_WORDS.items():
            text = pc.if_else(pc.equal(text, word), pg, text)
    elif pa.types.is_timestamp(t):
        assert isinstance(t, pa.TimestampType)
        naive = pc.cast(array, pa.timestamp(t.unit)) if t.tz else array
        text = _trim_fraction(pc.cast(naive, pa.string()))
        if t.tz:
            text = pc.binary_join_element_wise(text, "+00", "")
    elif pa.types.is_time(t):
        text = _trim_fraction(pc.cast(array, pa.string()))
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        hexed = pa.array(
            [None if v is None else "\\x" + v.hex() for v in array.to_pylist()], pa.string()
        )  # bytea is rare in analytics results: no vectorized hex kernel in pyarrow
        text = hexed
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        text = array
    else:
        try:
            text = pc.cast(array, pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            text = pa.array([None if v is None else str(v) for v in array.to_pylist()], pa.string())
    return pc.cast(text, pa.large_binary())


PG_EPOCH_DAYS = 10_957
"""2000-01-01, PostgreSQL's epoch, in days since 1970-01-01."""
_BIG_ENDIAN = {
    INT2.oid: ">i2",
    INT4.oid: ">i4",
    INT8.oid: ">i8",
    FLOAT4.oid: ">f4",
    FLOAT8.oid: ">f8",
}


def binary_column(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``column`` in PostgreSQL's binary format, as one ``large_binary`` array (nulls kept)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    t = array.type
    oid = pg_type(t).oid
    if oid in _BIG_ENDIAN:
        return _fixed(_numbers(array, _BIG_ENDIAN[oid]), array)
    if oid == BOOL.oid:
        return _fixed(_numbers(array, "u1"), array)
    if oid == DATE.oid:
        days = pc.cast(pc.cast(array, pa.date32()), pa.int32())
        return _fixed(_numbers(pc.subtract(days, PG_EPOCH_DAYS), ">i4"), array)
    if oid in (TIMESTAMP.oid, TIMESTAMPTZ.oid):
        micros = pc.cast(pc.cast(array, pa.timestamp("us", getattr(t, "tz", None))), pa.int64())
        return _fixed(_numbers(pc.subtract(micros, PG_EPOCH_DAYS * 86_400_000_000), ">i8"), array)
    if oid == TIME.oid:
        micros = pc.cast(pc.cast(array, pa.time64("us")), pa.int64())
        return _fixed(_numbers(micros, ">i8"), array)
    if oid == NUMERIC.oid:
        values = [None if v is None else _numeric(Decimal(v)) for v in array.to_pylist()]
        return pa.array(values, pa.large_binary())
    if oid == BYTEA.oid:
        return pc.cast(array, pa.large_binary())
    if oid == INTERVAL.oid:
        raise ValueError("interval columns in binary format are not supported: ask for text")
    return text_column(array)  # text, varchar, json: the binary format is the text


def _numbers(array: pa.Array, dtype: str) -> np.ndarray:
    """Values as a numpy array of ``dtype`` (nulls as 0: their length says NULL)."""
    filled = pc.fill_null(pc.cast(array, pa.uint8()) if dtype == "u1" else array, 0)
    return np.asarray(filled.to_numpy(zero_copy_only=False)).astype(dtype)


def _fixed(values: np.ndarray, array: pa.Array) -> pa.Array:
    """Fixed-size big-endian values as a ``large_binary`` array with ``array``'s nulls."""
    width, n = values.dtype.itemsize, len(values)
    offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int64) * width).tobytes())
    out = pa.Array.from_buffers(
        pa.large_binary(), n, [None, offsets, pa.py_buffer(values.tobytes())]
    )
    return pc.if_else(array.is_null(), pa.scalar(None, pa.large_binary()), out)


def _numeric(value: Decimal) -> bytes:
    """One ``numeric`` in PostgreSQL's binary format: digit groups of base 10000."""
    if not value.is_finite():
        return struct.pack("!hhHh", 0, 0, 0xC000, 0)  # NaN
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    scale = max(0, -exponent)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # digits before the decimal point
    integer = text[: max(0, point)] if exponent < 0 else text + "0" * exponent
    fraction = text[max(0, point) :].rjust(scale, "0") if exponent < 0 else ""
    integer = integer.lstrip("0")
    integer = "0" * (-len(integer) % 4) + integer
    fraction = fraction + "0" * (-len(fraction) % 4)
    groups = [int(integer[i : i + 4]) for i in range(0, len(integer), 4)]
    weight = len(groups) - 1
    groups += [int(fraction[i : i + 4]) for i in range(0, len(fraction), 4)]
    while groups and groups[-1] == 0:
        groups.pop()
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    if not groups:
        weight = 0
    header = struct.pack("!hhHh", len(groups), weight, 0x4000 if sign else 0, scale)
    return header + struct.pack(f"!{len(groups)}H", *groups)


def _trim_fraction(text: pa.Array) -> pa.Array:
    """``10:00:00.000000`` as ``10:00:00``, ``10:00:00.500000`` as ``10:00:00.5``."""
    trimmed = pc.replace_substring_regex(text, r"(\.\d*?)0+$", r"\1")
    return pc.replace_substring_regex(trimmed, r"\.$", "")


def data_rows(table: pa.Table, formats: Sequence[int] = ()) -> bytes:
    """Every row of ``table`` as PostgreSQL ``DataRow`` messages; ``formats``: the Bind
    message's result format codes (none: all text, one: for every column, else per column:
    0 text, 1 binary)."""
    n, k = table.num_rows, table.num_columns
    if n == 0:
        return b""
    values, lengths, nulls = [], [], []
    for i, column in enumerate(nested_to_json(table).columns):
        binary = result_format(formats, i) == 1
        text = binary_column(column) if binary else text_column(column)
        null = text.is_null().to_numpy(zero_copy_only=False)
        text = pc.fill_null(text, b"")
        buffers = text.buffers()
        offsets = np.frombuffer(buffers[1], np.int64)[text.offset : text.offset + n + 1]
        data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.empty(0)
        values.append((data, offsets))
        lengths.append(np.diff(offsets))
        nulls.append(null)
    field_bytes = sum(lengths, np.zeros(n, np.int64))
    row_size = 1 + 4 + 2 + 4 * k + field_bytes
    starts = np.zeros(n, np.int64)
    np.cumsum(row_size[:-1], out=starts[1:])
    out = np.empty(int(row_size.sum()), np.uint8)
    out[starts] = ord("D")
    _put(out, starts + 1, row_size - 1, 4)
    _put(out, starts + 5, np.full(n, k, np.int64), 2)
    position = starts + 7
    for (data, offsets), length, null in zip(values, lengths, nulls, strict=True):
        _put(out, position, np.where(null, -1, length), 4)
        position = position + 4
        total = int(offsets[-1] - offsets[0])
        if total:
            targets = np.repeat(position - offsets[:-1], length) + np.arange(
                offsets[0], offsets[-1]
            )
            out[targets] = data[offsets[0] : offsets[-1]]
        position = position + length
    return out.tobytes()


def result_format(formats: Sequence[int], column: int) -> int:
    """The format code of ``column`` in a Bind message's result format codes."""
    if not formats:
        return 0
    return formats[0] if len(formats) == 1 else formats[column]


def _put(out: np.ndarray, at: np.ndarray, value: np.ndarray, width: int) -> None:
    """Write ``value`` big-endian, ``width`` bytes each, at offsets ``at`` of ``out``."""
    unsigned = value.astype(np.int64) & ((1 << (8 * width)) - 1)
    for i in range(width):
        out[at + i] = (unsigned >> (8 * (width - 1 - i))) & 0xFF


__all__ = ["PgType", "binary_column", "data_rows", "pg_type", "result_format", "text_column"]
