"""Ctrl-C and SIGTERM as a stop request, safe against a burst of signals.

A Python handler that calls ``Event.set`` takes the event's lock. A second signal that
arrives while the first handler holds it runs the handler again, on the same thread, and
that waits for the lock forever: the process hangs instead of stopping. So the handler does
nothing in Python. The interpreter writes each signal's number to a pipe
(``signal.set_wakeup_fd``), and a thread reading the pipe sets the event.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGINT or SIGTERM (call from the main thread)."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _noted)

    def watch() -> None:
        while received := os.read(read, 64):
            if any(n in STOP_SIGNALS for n in received):
                stop.set()

    threading.Thread(target=watch, name="stop-signals", daemon=True).start()


def _noted(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the pipe already carries the signal."""
