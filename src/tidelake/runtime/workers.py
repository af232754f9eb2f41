"""Several worker processes per flow (``tidelake run --workers N``, ``workers:`` in the file).

Workers of a flow are members of one consumer group: the log splits the topic's
partitions between them (Kafka: also between machines running the same command against
the same cluster; the embedded log: between processes on this machine). Each worker
claims the partitions it is given in the sink and stores their positions only
(``runtime.runner``), so the sink needs ``several_writers``; a transform keeping state must
keep it per partition (``Transform.takes_several_workers``: a ``partitioned`` window), and
the runner tells it when partitions move (``Transform.claim``/``release``).

The supervisor starts each worker as ``tidelake run PIPELINE --flow F --worker ID``,
restarts one that crashed after a backoff (doubling from ``RESTART_FIRST_SECONDS`` to
``RESTART_MAX_SECONDS``, back to the first after ``RESTART_RESET_SECONDS`` of running),
and on Ctrl-C or SIGTERM passes SIGTERM to every worker and waits until each landed its
batch in flight and left the group. On Linux a worker also gets SIGTERM when the supervisor
dies without passing it on (SIGKILL, OOM killer), so no worker outlives its supervisor.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tidelake import registry
from tidelake.config import Pipeline
from tidelake.runtime.base import Sink, Transform

log = logging.getLogger(__name__)

RESTART_FIRST_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
RESTART_RESET_SECONDS = 30.0


def problems(pipeline: Pipeline, flow: str, workers: int) -> list[str]:
    """Why ``flow`` cannot run as ``workers`` workers, each with its fix (empty: it can)."""
    if workers <= 1:
        return []
    spec = pipeline.flows[flow]
    out = []
    if spec.engine == "spark":
        out.append(
            "Spark spreads a flow over its own executors; set workers: 1 and scale with the "
            "Spark cluster (spark.master, executors) instead"
        )
    if spec.source.type != "topic":  # type: ignore[attr-defined]
        out.append(
            f"a {spec.source.type} source cannot be split between workers; read from a "  # type: ignore[attr-defined]
            "topic (its partitions are what workers share) or set workers: 1"
        )
    sink: type[Sink] = registry.lookup("sink", spec.sink.type)  # type: ignore[attr-defined]
    if not sink.takes_several_writers(spec.sink, pipeline):
        out.append(
            f"this {spec.sink.type} sink keeps one writer per flow; use a lake or topic sink, "  # type: ignore[attr-defined]
            "or a table sink on a SQL database, for several workers, or set workers: 1"
        )
    elif "{" in str(getattr(spec.sink, "table", "")):
        out.append("a lake table template (fan-out) takes one worker; set workers: 1")
    for i, t in enumerate(spec.transforms):
        kind = t.type  # type: ignore[attr-defined]
        transform: type[Transform] = registry.lookup("transform", kind)
        if not transform.takes_several_workers(t):
            out.append(
                f"the window (transforms.{i}) spans all partitions, so N workers would not "
                "equal one; key the input topic by the window's `by` columns (e.g. the `key:` "
                "of the topic sink writing it) and set `partitioned: true` on the window, or "
                "set workers: 1"
                if kind == "window"
                else f"a {kind} transform (transforms.{i}) keeps state per worker, so N "
                "workers would not equal one; set workers: 1"
            )
        elif not transform.stateless and spec.sink.type == "topic":  # type: ignore[attr-defined]
            out.append(
                f"a {kind} transform (transforms.{i}) stores its bookkeeping per partition "
                "with the sink's checkpoint, which a topic sink keeps in one record per flow; "
                "use a lake or table sink for several workers, or set workers: 1"
            )
    return out


@dataclass
class Worker:
    flow: str
    id: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0


def tag() -> str:
    """This supervisor's prefix of its workers' ids: ``<host>-<pid>``."""
    return f"{os.uname().nodename}-{os.getpid()}"


def supervise(path: Path, counts: dict[str, int], stop: threading.Event) -> int:
    """Run ``counts[flow]`` workers of each flow until ``stop``; 0 when all stopped cleanly.

    A worker that exits on its own with status 0 (its finite source ended) is not restarted."""
    workers = [Worker(f, f"{tag()}.{i}") for f, n in counts.items() for i in range(n)]
    due = dict.fromkeys(range(len(workers)), 0.0)
    status = 0
    while not stop.is_set():
        now = time.monotonic()
        for i, w in enumerate(workers):
            if i in due and due[i] <= now:
                del due[i]
                w.proc, w.started = _spawn(path, w), now
        for i, w in enumerate(workers):
            code = w.proc.poll() if w.proc is not None and i not in due else None
            if code is None:
                continue
            if code == 0:
                w.proc = None
                continue
            ran = time.monotonic() - w.started
            w.failures = 1 if ran >= RESTART_RESET_SECONDS else w.failures + 1
            delay = min(RESTART_MAX_SECONDS, RESTART_FIRST_SECONDS * 2 ** (w.failures - 1))
            log.warning(
                "worker %s of flow %s exited with %s; restarting in %.1fs",
                w.id, w.flow, _why(code), delay,
            )  # fmt: skip
            w.proc, due[i] = None, time.monotonic() + delay
        if not any(w.proc is not None for w in workers) and not due:
            break
        stop.wait(0.2)
    for w in workers:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    for w in workers:
        if w.proc is not None:
            code = w.proc.wait()
            status = status or (0 if code in (0, -signal.SIGTERM) else 1)
    return status


def _spawn(path: Path, w: Worker) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "tidelake.cli", "run", str(path), "--flow", w.flow]
    arm = _terminate_with(os.getpid()) if sys.platform == "linux" else None
    return subprocess.Popen([*args, "--worker", w.id], preexec_fn=arm)


PR_SET_PDEATHSIG = 1


def _terminate_with(parent: int) -> Callable[[], None]:
    """For the forked worker, before exec: SIGTERM it when ``parent`` dies (prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before the wish was registered
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _why(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
