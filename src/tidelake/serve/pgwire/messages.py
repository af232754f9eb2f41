"""PostgreSQL protocol 3.0 messages: the few the server reads, the ones it writes.

Every message after start-up is a type byte, a big-endian int32 length that counts itself,
and a body; start-up packets have no type byte.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from tidelake.serve.pgwire.types import pg_type, result_format

PROTOCOL_3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_MESSAGE = 64 * 2**20
"""Longest message accepted from a client (a query text, bound parameters)."""


class ProtocolError(Exception):
    """The client broke the protocol; the connection ends after an error message."""


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def cstring(text: str) -> bytes:
    return text.encode() + b"\0"


async def read_startup(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack("!i", await reader.readexactly(4))
    if not 8 <= length <= 10_000:
        raise ProtocolError(f"invalid start-up packet length {length}")
    return await reader.readexactly(length - 4)


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!i", head[1:])
    if not 4 <= length <= MAX_MESSAGE:
        raise ProtocolError(f"invalid message length {length}")
    return head[:1], await reader.readexactly(length - 4)


class Body:
    """A cursor over one message body."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def int16(self) -> int:
        (value,) = struct.unpack_from("!h", self.data, self.at)
        self.at += 2
        return int(value)

    def int32(self) -> int:
        (value,) = struct.unpack_from("!i", self.data, self.at)
        self.at += 4
        return int(value)

    def bytes(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise ProtocolError("message shorter than its fields")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.at)
        if end < 0:
            raise ProtocolError("unterminated string in message")
        text = self.data[self.at : end].decode()
        self.at = end + 1
        return text


def startup_parameters(body: bytes) -> dict[str, str]:
    """The ``name=value`` pairs after the protocol version of a start-up packet."""
    parts = body[4:].split(b"\0")
    pairs = [p.decode() for p in parts[: len(parts) - len(parts) % 2]]
    return dict(zip(pairs[0::2], pairs[1::2], strict=True))


def authentication(code: int, data: bytes = b"") -> bytes:
    return message(b"R", struct.pack("!i", code) + data)


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstring(name) + cstring(value))


def ready(status: bytes) -> bytes:
    return message(b"Z", status)


def command_complete(tag: str) -> bytes:
    return message(b"C", cstring(tag))


def error(code: str, text: str, severity: str = "ERROR") -> bytes:
    fields = b"S" + cstring(severity) + b"V" + cstring(severity)
    fields += b"C" + cstring(code) + b"M" + cstring(text)
    return message(b"E", fields + b"\0")


def notice(text: str) -> bytes:
    return message(b"N", b"SNOTICE\0VNOTICE\0C00000\0M" + cstring(text) + b"\0")


def row_description(schema: pa.Schema, formats: Sequence[int] = ()) -> bytes:
    """Columns with their types and format codes (``formats``: as in ``data_rows``)."""
    body = struct.pack("!h", len(schema))
    for i, field in enumerate(schema):
        t = pg_type(field.type)
        code = result_format(formats, i)
        body += cstring(field.name) + struct.pack("!ihihih", 0, 0, t.oid, t.size, t.modifier, code)
    return message(b"T", body)


def parameter_description(oids: Sequence[int]) -> bytes:
    return message(b"t", struct.pack(f"!h{len(oids)}i", len(oids), *oids))


@dataclass(frozen=True)
class Status:
    """The transaction status byte of ``ReadyForQuery``."""

    IDLE = b"I"
    IN_TRANSACTION = b"T"
    FAILED = b"E"


PARSE_COMPLETE = message(b"1")
BIND_COMPLETE = message(b"2")
CLOSE_COMPLETE = message(b"3")
NO_DATA = message(b"n")
EMPTY_QUERY = message(b"I")
PORTAL_SUSPENDED = message(b"s")

__all__ = [
    "CANCEL_REQUEST",
    "GSSENC_REQUEST",
    "PROTOCOL_3",
    "SSL_REQUEST",
    "Body",
    "ProtocolError",
    "Status",
    "message",
    "read_message",
    "read_startup",
]
