"""Run every flow of a scenario's pipeline in the background until a condition holds."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tidelake.config import Pipeline
from tidelake.runtime.runner import run_flows


def run_until(pipeline: Pipeline, done: Callable[[], bool], timeout: float = 120) -> None:
    """Start all flows, poll ``done`` until true or ``timeout``, stop them; re-raise a flow's
    error. The caller asserts on the results (``done`` may be false at the deadline)."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_flows(pipeline, list(pipeline.flows), stop)
        except BaseException as e:  # surfaced below
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not errors and not done():
            time.sleep(0.5)
    finally:
        stop.set()
        worker.join(60)
    assert not errors, errors


def sqlite_value(db: Path, table: str, what: str = "count(*)") -> int:
    """``what`` over ``table`` in a SQLite file; 0 while the file or table does not exist."""
    try:
        with sqlite3.connect(db) as c:
            return int(c.execute(f"SELECT coalesce({what}, 0) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
