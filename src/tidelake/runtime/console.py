"""The live console view of running flows (rich)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.live import Live
from rich.table import Table

from tidelake.runtime.metrics import FlowMetrics

PROGRESS_EVERY = 5.0  # seconds between progress lines when the output is not a terminal


def render(metrics: Sequence[FlowMetrics]) -> Table:
    """One row per flow; with workers, one per worker with its partitions and their lag."""
    workers = any(m.worker for m in metrics)
    t = Table(title="tidelake flows", expand=False)
    t.add_column("flow", no_wrap=True)
    if workers:
        t.add_column("worker", no_wrap=True)
        t.add_column("partitions (lag)")
    t.add_column("state", no_wrap=True)
    for col in ("in", "out", "rows/s", "lag", "batch ms", "dead", "errors"):
        t.add_column(col, justify="right", no_wrap=col != "errors")
    for m in metrics:
        t.add_row(
            m.flow,
            *([m.worker, partitions(m)] if workers else []),
            m.state,
            f"{m.records_in:,}",
            f"{m.records_out:,}",
            f"{m.rate_out:,.0f}",
            f"{m.lag:,}",
            f"{m.last_batch_seconds * 1000:.0f}",
            f"{m.dead_letters:,}",
            f"{m.errors:,}" + (f" ({m.last_error[:40]})" if m.last_error else ""),
        )
    return t


def partitions(m: FlowMetrics) -> str:
    return " ".join(f"{k}:{lag:,}" for k, lag in sorted(m.partitions.items()))


def progress_line(m: FlowMetrics) -> str:
    """One flow's state as a log line (for pipes, CI and log files)."""
    who = f" worker {m.worker} [{partitions(m)}]" if m.worker else ""
    line = (
        f"{time.strftime('%H:%M:%S')} {m.flow}{who} {m.state}: in {m.records_in:,} "
        f"out {m.records_out:,} ({m.rate_out:,.0f} rows/s) lag {m.lag:,} "
        f"dead {m.dead_letters:,} errors {m.errors:,}"
    )
    return line + (f" last error: {m.last_error}" if m.last_error else "")


def show_live(
    metrics: Sequence[FlowMetrics] | Callable[[], Sequence[FlowMetrics]],
    done: threading.Event,
    console: Console,
    every: float = PROGRESS_EVERY,
) -> None:
    """Refresh the table until ``done``. Not on a terminal, print a progress line per flow
    every ``every`` seconds (and once more at the end) instead. ``metrics`` may be a
    function returning the current counters (workers publish theirs from other processes)."""
    current = metrics if callable(metrics) else lambda: metrics
    if not console.is_terminal:
        while True:
            finished = done.wait(every)
            for m in current():
                console.print(progress_line(m), markup=False, highlight=False, soft_wrap=True)
            if finished:
                return
    with Live(render(current()), console=console, refresh_per_second=4) as live:
        while not done.is_set():
            live.update(render(current()))
            time.sleep(0.25)
        live.update(render(current()))
