"""A flow's positions in a small SQLite file, for sinks that cannot hold them with their data."""

from __future__ import annotations

from pathlib import Path

from tidelake.runtime.base import Checkpoint
from tidelake.sqlite_wal import open_wal


class CheckpointStore:
    def __init__(self, path: Path, flow: str) -> None:
        self.flow = flow
        self.conn = open_wal(path)
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS checkpoints (flow TEXT, position TEXT, offset INTEGER,"
            " PRIMARY KEY (flow, position))"
        )

    def load(self) -> Checkpoint:
        rows = self.conn.execute(
            "SELECT position, offset FROM checkpoints WHERE flow = ?", (self.flow,)
        )
        return dict(rows)

    def save(self, checkpoint: Checkpoint) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)",
            [(self.flow, k, v) for k, v in checkpoint.items()],
        )

    def close(self) -> None:
        self.conn.close()
