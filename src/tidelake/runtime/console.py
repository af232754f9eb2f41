"""The live console view of running flows (rich)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from rich.console import Console
from rich.live import Live
from rich.table import Table

from tidelake.runtime.metrics import FlowMetrics


def render(metrics: Sequence[FlowMetrics]) -> Table:
    t = Table(title="tidelake flows", expand=False)
    t.add_column("flow", no_wrap=True)
    t.add_column("state", no_wrap=True)
    for col in ("in", "out", "rows/s", "lag", "batch ms", "dead", "errors"):
        t.add_column(col, justify="right", no_wrap=col != "errors")
    for m in metrics:
        t.add_row(
            m.flow,
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


def show_live(metrics: Sequence[FlowMetrics], done: threading.Event, console: Console) -> None:
    """Refresh the table until ``done``; prints the final state once when not a terminal."""
    if not console.is_terminal:
        done.wait()
        console.print(render(metrics))
        return
    with Live(render(metrics), console=console, refresh_per_second=4) as live:
        while not done.is_set():
            live.update(render(metrics))
            time.sleep(0.25)
        live.update(render(metrics))
