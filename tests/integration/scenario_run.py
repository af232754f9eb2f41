"""Run every flow of a scenario's pipeline in the background until a condition holds."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

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


def read_until(proc: subprocess.Popen[str], text: str, timeout: float) -> list[str]:
    """The lines ``proc`` printed up to the first one holding ``text``; the test fails if
    ``timeout`` seconds pass or the process ends first."""
    assert proc.stdout is not None
    started, out = time.monotonic(), []
    while time.monotonic() - started < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        out.append(line)
        if text in line:
            return out
    pytest.fail(f"no {text!r} within {timeout:.0f} s:\n" + "".join(out))


def interrupt(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C ``proc`` and return the rest of its output (killed if not gone in 30 s)."""
    proc.send_signal(signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return rest
