"""Print batches to the terminal (for trying a flow out); positions kept in the state dir."""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field
from rich.console import Console
from rich.table import Table

from tidelake.runtime.base import Checkpoint, ConnectorConfig, FlowContext, Sink
from tidelake.sinks.checkpoints import CheckpointStore


class ConsoleSinkConfig(ConnectorConfig):
    type: Literal["console"]
    rows: int = Field(10, ge=0, description="rows shown per batch")


class ConsoleSink(Sink):
    Config = ConsoleSinkConfig
    config: ConsoleSinkConfig

    def open(self, ctx: FlowContext) -> None:
        self.console = Console(stderr=False)
        self.flow = ctx.flow
        self.store = CheckpointStore(ctx.pipeline.state_dir / "checkpoints.db", ctx.owner)

    def checkpoint(self) -> Checkpoint:
        return self.store.load()

    def write(self, table: pa.Table, checkpoint: Checkpoint) -> None:
        if table.num_rows and self.config.rows:
            view = Table(*table.column_names, title=f"{self.flow}: {table.num_rows} rows")
            for row in table.slice(0, self.config.rows).to_pylist():
                view.add_row(*(str(v) for v in row.values()))
            self.console.print(view)
        self.store.save(checkpoint)

    def close(self) -> None:
        self.store.close()
