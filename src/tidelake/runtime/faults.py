"""Which failures a flow rides through, and the one line that explains the others.

A flow that fails restarts from its sink's checkpoint, which is exactly the path a
kill -9 takes (nothing lost, nothing duplicated). So retrying is always safe; what
must be decided is whether waiting can help. A fault is *transient* when the system
on the other side may come back by itself: a lost or refused connection, a server
shutting down, a busy lock, an aborted transaction, a full disk. Everything else (a
pipeline bug, a fenced writer, bad configuration) ends the flow with its message.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from tidelake.errors import ConfigError, TransientError

_CONNECTION_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
}
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")
_PSYCOPG_TRANSIENT = {"OperationalError", "SerializationFailure", "DeadlockDetected"}
_DISK_FULL = ("no space left on device", "database or disk is full", "disk full")


@dataclass(frozen=True)
class Fault:
    """A classified failure: whether to retry, and what to tell the user."""

    transient: bool
    reason: str


def chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes, outermost first."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def classify(exc: BaseException) -> Fault:
    """Transient or permanent, with a one-line reason naming the cause (and the fix)."""
    summary = f"{_system(exc)}{type(exc).__name__}: {_first_line(exc)}"
    for e in chain(exc):
        if isinstance(e, ConfigError):
            return Fault(False, summary)
        if _disk_full(e):
            return Fault(True, f"disk full ({_first_line(e)}): free space on the device")
        if isinstance(e, TransientError) or _transient(e):
            return Fault(True, summary)
    return Fault(False, summary)


def _system(e: BaseException) -> str:
    """``PostgreSQL: `` for a driver's own exception, so the reason names the system."""
    module = type(e).__module__
    for prefix, name in (("psycopg", "PostgreSQL"), ("sqlite3", "SQLite"), ("cimpl", "Kafka")):
        if module.startswith(prefix):
            return f"{name}: "
    return ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def _disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    text = str(e).lower()
    return any(s in text for s in _DISK_FULL)


def _transient(e: BaseException) -> bool:
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    if isinstance(e, OSError) and e.errno in _CONNECTION_ERRNOS:
        return True
    if isinstance(e, sqlite3.OperationalError):
        return any(s in str(e).lower() for s in _SQLITE_BUSY)
    module, name = type(e).__module__, type(e).__name__
    if module.startswith("psycopg"):
        # the server went away or refused us (restart, shutdown, network), or a
        # serialization failure / deadlock that succeeds when run again
        return any(b.__name__ in _PSYCOPG_TRANSIENT for b in type(e).__mro__)
    if name == "KafkaException" and e.args and hasattr(e.args[0], "retriable"):
        from tidelake.broker.kafka import kafka_transient

        return kafka_transient(e.args[0])
    if module.startswith("httpx"):
        return name in ("ConnectError", "ReadError", "WriteError", "RemoteProtocolError") or (
            "Timeout" in name
        )
    return module.startswith("pyiceberg") and name == "CommitFailedException"
