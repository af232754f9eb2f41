"""Land batches in a SQLite, PostgreSQL or MySQL/MariaDB table, exactly once.

Rows and the flow's source positions are written in one transaction
(docs/architecture.md, principle 1). Rows that carry provenance
(``_topic/_partition/_offset``) below the stored position of their partition are dropped
inside that transaction, so a zombie writer or a re-delivered batch can never land twice.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tidelake.db import Database, connect_db
from tidelake.runtime.base import Checkpoint, ConnectorConfig, FlowContext, Sink


class TableSinkConfig(ConnectorConfig):
    type: Literal["table"]
    table: str = Field(description="destination table (created from the first batch's schema)")
    mode: Literal["append", "upsert"] = Field("append", description="upsert needs 'key'")
    key: list[str] = Field([], description="primary-key columns (for upsert and delete)")
    delete_when: str | None = Field(
        None, description="SQL predicate over the batch; matching rows delete their key"
    )
    database: str | None = Field(None, description="database URL (default: the pipeline's)")
    keep_provenance: bool = Field(True, description="store _topic/_partition/_offset columns")


def fence(table: pa.Table, stored: Checkpoint) -> pa.Table:
    """Drop rows at offsets the sink already holds (vectorized, one mask per partition)."""
    if not stored or "_offset" not in table.column_names or not table.num_rows:
        return table
    stale = pa.array([False] * table.num_rows)
    topics, parts = table.column("_topic"), table.column("_partition")
    for key, next_offset in stored.items():
        topic, _, part = key.rpartition("/")
        if not part.isdigit():
            continue
        here = pc.and_(pc.equal(topics, topic), pc.equal(parts, int(part)))
        stale = pc.or_(stale, pc.and_(here, pc.less(table.column("_offset"), next_offset)))
    return table.filter(pc.invert(stale))


def merge(stored: Checkpoint, new: Checkpoint) -> Checkpoint:
    """Positions only move forward, whoever writes last."""
    return stored | {k: max(v, stored.get(k, v)) for k, v in new.items()}


class TableSink(Sink):
    Config = TableSinkConfig
    config: TableSinkConfig

    def open(self, ctx: FlowContext) -> None:
        cfg = self.config
        if cfg.mode == "upsert" and not cfg.key:
            from tidelake.errors import ConfigError

            raise ConfigError(f"flow {ctx.flow}: sink mode 'upsert' needs 'key: [column, ...]'")
        self.flow = ctx.owner
        self.db: Database = connect_db(ctx.pipeline.url(cfg.database or ctx.pipeline.database))
        self.db.load_checkpoint(self.flow)  # creates the checkpoint table if missing

    def checkpoint(self) -> Checkpoint:
        return self.db.load_checkpoint(self.flow)

    def write(self, table: pa.Table, checkpoint: Checkpoint) -> None:
        cfg = self.config
        with self.db.transaction(lock=f"tidelake:{self.flow}"):
            stored = self.db.load_checkpoint(self.flow)
            table = fence(table, stored)
            if table.num_rows:
                deletes = None
                if cfg.delete_when:
                    table, deletes = _split(table, cfg.delete_when)
                if not cfg.keep_provenance:
                    table = table.drop_columns(
                        [c for c in ("_topic", "_partition", "_offset") if c in table.column_names]
                    )
                key = cfg.key if cfg.mode == "upsert" else None
                if table.num_rows:
                    self.db.ensure_table(cfg.table, table.schema, key)
                    self.db.insert(cfg.table, table, key)
                if deletes is not None and deletes.num_rows and self.db.columns(cfg.table):
                    self.db.delete(cfg.table, deletes.select(cfg.key))
            self.db.save_checkpoint(self.flow, merge(stored, checkpoint))

    def close(self) -> None:
        if hasattr(self, "db"):  # open() may have failed before connecting
            self.db.close()


def _split(table: pa.Table, predicate: str) -> tuple[pa.Table, pa.Table]:
    """(rows to upsert, rows whose key to delete), evaluated by DuckDB over the batch."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register("batch", table)
        mask = con.sql(f"SELECT coalesce(({predicate}), false) AS d FROM batch").to_arrow_table()
    finally:
        con.close()
    d = mask.column("d")
    return table.filter(pc.invert(d)), table.filter(d)
