"""Kill -9 helpers shared by the exactly-once tests: run ``tidelake run`` as a subprocess,
wait until its output visibly grows, SIGKILL it at a random moment, and restart it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

Proc = subprocess.Popen[bytes]


def start(
    pipeline: Path,
    flows: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
) -> Proc:
    """``python -m tidelake.cli run PIPELINE [--flow F ...] [EXTRA ...]`` in the background."""
    args = [sys.executable, "-m", "tidelake.cli", "run", str(pipeline), *extra]
    for flow in flows:
        args += ["--flow", flow]
    return subprocess.Popen(
        args,
        env=os.environ | dict(env or {}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stderr_tail(proc: Proc) -> str:
    return proc.stderr.read().decode()[-2000:] if proc.stderr else ""  # type: ignore[union-attr]


def flow_running(state_dir: Path, flow: str) -> Callable[[Proc], bool]:
    """``ready`` for ``run_to_target``: the flow's published metrics say this process runs it."""

    def ready(proc: Proc) -> bool:
        try:
            metrics = json.loads((state_dir / "metrics" / f"{flow}.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(metrics.get("pid") == proc.pid and metrics.get("state") == "running")

    return ready


def wait_for_progress(
    count: Callable[[], int],
    above: int,
    target: int,
    proc: Proc,
    timeout: float = 60,
    poll: float = 0.05,
) -> int:
    """Wait until ``count()`` passes ``above`` (or reaches ``target``); return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = count()
        if n > above or n >= target:
            return n
        if proc.poll() is not None:
            raise AssertionError(f"flow exited early: {stderr_tail(proc)}")
        time.sleep(poll)
    raise AssertionError(f"no progress past {above} rows in {timeout:.0f} s")


def kill_repeatedly(
    launch: Callable[[], Proc],
    count: Callable[[], int],
    target: int,
    kills: int,
    rng: random.Random,
    pause: tuple[float, float] = (0.0, 0.4),
    timeout: float = 60,
    poll: float = 0.05,
) -> list[int]:
    """Start, wait for visible progress, sleep a random while, SIGKILL — ``kills`` times
    (fewer if ``target`` is reached first). Returns the count seen before each kill."""
    landed, seen = 0, []
    for _ in range(kills):
        proc = launch()
        try:
            landed = wait_for_progress(count, landed, target, proc, timeout, poll)
            time.sleep(rng.uniform(*pause))
        finally:  # never leave a flow running behind a failed assertion
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        seen.append(landed)
        if landed >= target:
            break
    return seen


def run_to_target(
    launch: Callable[[], Proc],
    count: Callable[[], int],
    target: int,
    timeout: float = 180,
    poll: float = 0.2,
    settle: float = 1.0,
    ready: Callable[[Proc], bool] | None = None,
) -> None:
    """Start once more, wait until ``count()`` reaches ``target``, give a duplicate ``settle``
    seconds to land, then stop gracefully (SIGTERM) and require exit status 0.

    ``ready(proc)``, if given, must hold before the count is checked: a flow that already
    reached the target must still be running (signal handlers installed) when it is stopped.
    """
    proc = launch()
    try:
        deadline = time.monotonic() + timeout
        while ready is not None and not ready(proc) and time.monotonic() < deadline:
            assert proc.poll() is None, stderr_tail(proc)
            time.sleep(poll)
        while count() < target and time.monotonic() < deadline:
            assert proc.poll() is None, stderr_tail(proc)
            time.sleep(poll)
        time.sleep(settle)  # a duplicate would land after the count first reached the target
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, stderr_tail(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_to_exit(launch: Callable[[], Proc], timeout: float = 180) -> None:
    """Start once more and require a finite flow (e.g. a generator with ``limit``) to end by
    itself with exit status 0."""
    proc = launch()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired as e:
        proc.kill()
        proc.wait()
        raise AssertionError(f"flow did not finish in {timeout:.0f} s: {stderr_tail(proc)}") from e
    assert rc == 0, stderr_tail(proc)
