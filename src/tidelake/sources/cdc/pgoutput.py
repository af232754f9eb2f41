"""Decoder for PostgreSQL's built-in ``pgoutput`` logical replication protocol (version 1).

Message formats: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html

The decoder is pure (bytes in, messages out) so it can be tested on captured bytes.
Column values arrive in the type's text output form; :func:`converter` turns them into
the JSON values Debezium's PostgreSQL connector emits with ``JsonConverter`` and
``schemas.enable=false`` (adaptive time precision, ``binary.handling.mode=bytes``), so
events from the native engine and from Debezium unwrap to the same rows.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from struct import Struct
from typing import Literal

PG_EPOCH_MICROS = 946_684_800_000_000
"""2000-01-01 (PostgreSQL's epoch) in microseconds since 1970-01-01."""

UNAVAILABLE = "__debezium_unavailable_value"
"""What Debezium puts in place of an unchanged TOASTed value it was not sent."""

_I16 = Struct(">h")
_I32 = Struct(">i")
_U32 = Struct(">I")
_BEGIN = Struct(">qqI")
_COMMIT = Struct(">bqqq")


class _Unchanged:
    """Marker for an unchanged TOASTed column ('u' in TupleData)."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
Value = str | None | _Unchanged


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    is_key: bool


@dataclass
class Relation:
    relid: int
    schema: str
    name: str
    replica_identity: str
    columns: list[Column]
    converters: list[Callable[[str], object]] = field(default_factory=list)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    commit_ts_us: int
    """Commit time, microseconds since 1970-01-01."""
    xid: int


@dataclass(frozen=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(frozen=True)
class Insert:
    relid: int
    new: list[Value]


@dataclass(frozen=True)
class Update:
    relid: int
    old: list[Value] | None
    """The old row: key columns only ('K'), the whole row ('O', REPLICA IDENTITY FULL) or None."""
    old_is_key: bool
    new: list[Value]


@dataclass(frozen=True)
class Delete:
    relid: int
    old: list[Value]
    old_is_key: bool


@dataclass(frozen=True)
class Truncate:
    relids: list[int]
    options: int


@dataclass(frozen=True)
class Other:
    """Origin, Type and logical-decoding Message: carried no row, kept for completeness."""

    kind: str


Message = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Other


class ProtocolError(ValueError):
    """Bytes that are not a pgoutput version-1 message."""


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(0, pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[list[Value], int]:
    (n,) = _I16.unpack_from(buf, pos)
    pos += 2
    out: list[Value] = []
    append = out.append
    for _ in range(n):
        kind = buf[pos]
        pos += 1
        if kind == 0x74:  # 't' text
            (size,) = _I32.unpack_from(buf, pos)
            pos += 4
            append(buf[pos : pos + size].decode())
            pos += size
        elif kind == 0x6E:  # 'n' null
            append(None)
        elif kind == 0x75:  # 'u' unchanged TOAST
            append(UNCHANGED)
        else:
            raise ProtocolError(f"unexpected tuple column kind {chr(kind)!r} (binary mode is off)")
    return out, pos


def decode(buf: bytes) -> Message:
    """One pgoutput message (the ``data`` of ``pg_logical_slot_peek_binary_changes``)."""
    kind = buf[0]
    if kind == 0x42:  # B
        final_lsn, ts, xid = _BEGIN.unpack_from(buf, 1)
        return Begin(final_lsn, ts + PG_EPOCH_MICROS, xid)
    if kind == 0x43:  # C
        flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(buf, 1)
        return Commit(flags, commit_lsn, end_lsn, ts + PG_EPOCH_MICROS)
    if kind == 0x49:  # I
        (relid,) = _U32.unpack_from(buf, 1)
        if buf[5] != 0x4E:
            raise ProtocolError("Insert without a new tuple")
        new, _ = _tuple(buf, 6)
        return Insert(relid, new)
    if kind == 0x55:  # U
        (relid,) = _U32.unpack_from(buf, 1)
        pos, old, old_is_key = 5, None, False
        if buf[pos] in (0x4B, 0x4F):  # K or O
            old_is_key = buf[pos] == 0x4B
            old, pos = _tuple(buf, pos + 1)
        if buf[pos] != 0x4E:
            raise ProtocolError("Update without a new tuple")
        new, _ = _tuple(buf, pos + 1)
        return Update(relid, old, old_is_key, new)
    if kind == 0x44:  # D
        (relid,) = _U32.unpack_from(buf, 1)
        old, _ = _tuple(buf, 6)
        return Delete(relid, old, buf[5] == 0x4B)
    if kind == 0x52:  # R
        (relid,) = _U32.unpack_from(buf, 1)
        schema, pos = _cstring(buf, 5)
        name, pos = _cstring(buf, pos)
        ident = chr(buf[pos])
        (ncols,) = _I16.unpack_from(buf, pos + 1)
        pos += 3
        cols = []
        for _ in range(ncols):
            flags = buf[pos]
            cname, pos = _cstring(buf, pos + 1)
            (oid,) = _U32.unpack_from(buf, pos)
            (typmod,) = _I32.unpack_from(buf, pos + 4)
            pos += 8
            cols.append(Column(cname, oid, typmod, bool(flags & 1)))
        return Relation(relid, schema or "pg_catalog", name, ident, cols)
    if kind == 0x54:  # T
        (n,) = _I32.unpack_from(buf, 1)
        options = buf[5]
        relids = [_U32.unpack_from(buf, 6 + 4 * i)[0] for i in range(n)]
        return Truncate(relids, options)
    if kind in (0x4F, 0x59, 0x4D):  # Origin, Type, Message
        return Other(chr(kind))
    raise ProtocolError(f"unknown pgoutput message type {chr(kind)!r}")


# ---- text values -> Debezium-compatible JSON values ---------------------------------------

DecimalMode = Literal["double", "string"]
_EPOCH = datetime(1970, 1, 1)
_EPOCH_DATE = date(1970, 1, 1)
_US = timedelta(microseconds=1)


def _bool(v: str) -> bool:
    return v in ("t", "true")  # the output function prints t/f; a ::text cast true/false


def _float(v: str) -> float | str:
    try:
        return float(v)
    except ValueError:
        return v


def _numeric_double(v: str) -> float | None:
    return None if v == "NaN" else float(v)


def _timestamp_us(v: str) -> int | None:
    if v in ("infinity", "-infinity") or v.endswith(" BC"):
        return None
    return (datetime.fromisoformat(v) - _EPOCH) // _US


def _timestamp_ms(v: str) -> int | None:
    us = _timestamp_us(v)
    return None if us is None else us // 1000


def _timestamptz(v: str) -> str | None:
    if v in ("infinity", "-infinity") or v.endswith(" BC"):
        return None
    dt = datetime.fromisoformat(v).astimezone(UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += f".{dt.microsecond:06d}".rstrip("0")
    return text + "Z"


def _date(v: str) -> int | None:
    if v in ("infinity", "-infinity") or v.endswith(" BC"):
        return None
    return (date.fromisoformat(v) - _EPOCH_DATE).days


def _time_us(v: str) -> int:
    if v.startswith("24:"):
        return 86_400_000_000
    t = time.fromisoformat(v)
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


def _time_ms(v: str) -> int:
    return _time_us(v) // 1000


def _bytea(v: str) -> str:
    return base64.b64encode(bytes.fromhex(v[2:])).decode() if v.startswith("\\x") else v


def _text(v: str) -> str:
    return v


_INTS = {20, 21, 23, 26, 28}  # int8, int2, int4, oid, xid
_FLOATS = {700, 701}


def converter(
    type_oid: int, typmod: int, decimals: DecimalMode = "double"
) -> Callable[[str], object]:
    """The function from a column's text form to its JSON value, by type OID and modifier."""
    if type_oid in _INTS:
        return int
    if type_oid == 16:
        return _bool
    if type_oid in _FLOATS:
        return _float
    if type_oid == 1700:
        return _numeric_double if decimals == "double" else _text
    if type_oid == 1114:  # timestamp: adaptive precision -> millis for (0..3), micros otherwise
        return _timestamp_ms if 0 <= typmod <= 3 else _timestamp_us
    if type_oid == 1184:
        return _timestamptz
    if type_oid == 1082:
        return _date
    if type_oid == 1083:
        return _time_ms if 0 <= typmod <= 3 else _time_us
    if type_oid == 17:
        return _bytea
    return _text


def prepare(relation: Relation, decimals: DecimalMode = "double") -> Relation:
    relation.converters = [converter(c.type_oid, c.typmod, decimals) for c in relation.columns]
    return relation


def image(relation: Relation, values: list[Value], key_only: bool = False) -> dict[str, object]:
    """A row as a JSON-ready dict. ``key_only``: an old tuple that carries just the key."""
    out: dict[str, object] = {}
    for col, conv, v in zip(relation.columns, relation.converters, values, strict=False):
        if v is None:
            out[col.name] = None
        elif v is UNCHANGED:
            out[col.name] = UNAVAILABLE
        else:
            out[col.name] = conv(v)  # type: ignore[arg-type]
    if key_only:
        for col in relation.columns:
            if not col.is_key:
                out[col.name] = None
    return out


def lsn_to_int(lsn: str) -> int:
    hi, _, lo = lsn.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
