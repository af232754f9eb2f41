"""A stream of SIGTERMs stops a process cleanly: a Python handler that set the stop event
itself re-entered on the event's lock and hung or died of recursion."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

CHILD = """
import threading
from tidelake.runtime.signals import stop_on_signals
stop = threading.Event()
stop_on_signals(stop)
print("ready", flush=True)
stop.wait()
for _ in range(200_000):  # Python code keeps running between signals, as a flow landing
    threading.Event().set()
"""


def test_a_stream_of_signals_stops_the_process_cleanly() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0 and child.poll() is None:
        os.kill(child.pid, signal.SIGTERM)
    assert child.wait(30) == 0, child.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
