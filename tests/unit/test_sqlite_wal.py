"""Opening a SQLite file while other connections write to it never fails with "locked"."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from tidelake.sqlite_wal import open_wal


def _open_while_writing(path: Path) -> list[Exception]:
    """Two writers and five threads opening the same new file at once; the errors seen."""
    errors: list[Exception] = []
    stop = threading.Event()

    def write() -> None:
        try:
            conn = open_wal(path)
            conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            while not stop.is_set():
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(2000)])
                conn.execute("COMMIT")
            conn.close()
        except sqlite3.Error as e:
            errors.append(e)

    def open_often() -> None:
        try:
            for _ in range(40):
                open_wal(path).close()
        except sqlite3.Error as e:
            errors.append(e)

    writers = [threading.Thread(target=write) for _ in range(2)]
    openers = [threading.Thread(target=open_often) for _ in range(5)]
    for t in writers + openers:
        t.start()
    for t in openers:
        t.join()
    stop.set()
    for t in writers:
        t.join()
    return errors


def test_open_while_others_write(tmp_path: Path) -> None:
    for trial in range(40):
        path = tmp_path / f"{trial}.db"
        errors = _open_while_writing(path)
        assert not errors, errors[0]
        assert open_wal(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
