"""Start the Streamlit dashboard as a child process that never outlives its parent.

The child is ``python -m tidelake.serve.dashboard._child <streamlit args>``: it asks
the kernel to send it SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``, kept
across exec), then execs ``streamlit run app.py``. So the dashboard stops with its
parent whether that parent exits, is killed, or gets Ctrl-C; Streamlit handles
SIGTERM/SIGINT itself by closing its server cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import types
from pathlib import Path

from tidelake import config, extras

APP = Path(__file__).with_name("app.py")
_CHILD = "tidelake.serve.dashboard._child"


def streamlit_args(pipeline_path: Path, port: int, host: str, refresh: float) -> list[str]:
    """``streamlit run`` arguments: headless, no telemetry, no browser, no file watcher."""
    return [
        "run",
        str(APP),
        "--server.headless=true",
        f"--server.port={port}",
        f"--server.address={host}",
        "--server.fileWatcherType=none",
        "--server.runOnSave=false",
        "--browser.gatherUsageStats=false",
        "--client.toolbarMode=viewer",
        "--runner.magicEnabled=false",
        "--",
        str(pipeline_path),
        f"--refresh={refresh}",
    ]


def launch(
    pipeline_path: str | Path,
    port: int = 8501,
    host: str = "127.0.0.1",
    *,
    refresh: float = 2.0,
) -> subprocess.Popen[bytes]:
    """Start the dashboard for a pipeline file; returns the running process.

    The pipeline file is validated first, so a bad file fails here with file:line.
    Stop it with ``stop(proc)``; it also stops by itself when this process dies.
    """
    extras.require("dashboard", "the dashboard")
    path = Path(pipeline_path).resolve()
    config.load(path)
    env = os.environ | {"STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            _CHILD,
            str(os.getpid()),
            *streamlit_args(path, port, host, refresh),
        ],
        env=env,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM (Streamlit shuts down cleanly), SIGKILL after ``timeout``; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def serve(
    pipeline_path: str | Path, port: int = 8501, host: str = "127.0.0.1", refresh: float = 2.0
) -> int:
    """Run the dashboard in the foreground until it exits, Ctrl-C or SIGTERM (for the CLI)."""
    proc = launch(pipeline_path, port, host, refresh=refresh)

    def on_term(signum: int, frame: types.FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0 if stop(proc) in (0, -signal.SIGTERM) else 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop(proc)
