"""Per-flow counters, shared with the console display, /metrics and the dashboard.

Each running flow writes its counters to ``<state>/metrics/<flow>.json`` about
once a second (a worker of several: ``<flow>@<worker>.json``), so other processes
(API, dashboard) can read them without talking to the runner.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class FlowMetrics:
    flow: str
    state: str = "starting"
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    batches: int = 0
    errors: int = 0
    dead_letters: int = 0
    lag: int = 0
    last_batch_seconds: float = 0.0
    last_checkpoint: float = 0.0
    started: float = field(default_factory=time.time)
    last_error: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    """Named counts transforms and sinks report (``redact``: ``redacted_email``, ...; the
    ``lake`` sink: ``lake_commit_retries``, commits lost to another writer and retried)."""
    worker: str = ""
    """Which worker of the flow (``--workers``); empty for a flow run in one process."""
    partitions: dict[str, int] = field(default_factory=dict)
    """The partitions this worker owns (``<topic>/<partition>``) and each one's lag."""

    @property
    def rate_out(self) -> float:
        elapsed = max(time.time() - self.started, 1e-9)
        return self.records_out / elapsed

    @classmethod
    def load(cls, raw: dict[str, Any]) -> FlowMetrics:
        """Counters as published by ``save`` (extra keys ignored)."""
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})

    def save(self, directory: Path) -> None:
        """Publish atomically (write then rename) so readers never see half a file."""
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{self.flow}@{self.worker}" if self.worker else self.flow
        tmp = directory / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(self) | {"updated": time.time(), "pid": os.getpid()}))
        tmp.replace(directory / f"{name}.json")


def read_all(directory: Path) -> list[dict[str, object]]:
    """Latest published counters of every flow that ever ran in this state dir."""
    out = []
    for p in sorted(directory.glob("*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return out
