"""SQLite connections in WAL mode, shared by every process and thread that opens one file."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

BUSY_TIMEOUT_S = 60.0


def open_wal(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with WAL journaling.

    Switching a file to WAL takes an exclusive lock and SQLite does not always wait for it
    through the busy timeout, so several flows opening a new file at once could fail with
    "database is locked": the switch is retried until the timeout. WAL persists in the file,
    so later connections find it set and skip the switch.
    """
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return conn
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.05)
