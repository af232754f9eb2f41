"""Land batches in a SQLite, PostgreSQL or MySQL/MariaDB table, exactly once; or in a
Cassandra table or MongoDB collection when ``database`` names one.

Rows and the flow's source positions are written in one transaction
(docs/architecture.md, principle 1), one checkpoint row per partition.

Several writers (``--workers``): each worker stores only the positions of the partitions
it owns. The rule, checked in that same transaction under a per-flow lock: a commit whose
partition epochs are older than the stored ones is refused (``positions.merge`` raises
``Fenced``) -- that worker lost the partitions to another while it was paused, so nothing
of its batch lands. ``claim`` bumps the epochs in a transaction of its own.

A ``cassandra://`` or ``mongodb://`` ``database`` hands the batches to the ``cassandra`` or
``mongodb`` sink (``table`` is the table or collection, ``key`` its key), so one pipeline
file switches a flow's store by an environment variable; their delivery is theirs (and
they take one writer per flow).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Self

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from tidelake.db import Database, connect_db
from tidelake.runtime import positions
from tidelake.runtime.base import Checkpoint, ConnectorConfig, FlowContext, Sink

if TYPE_CHECKING:
    from tidelake.config import Pipeline

#: ``database`` URL prefix -> the store it names (``sql``: ``db.connect_db``).
STORES = {
    "sqlite:///": "sql",
    "postgresql://": "sql",
    "postgres://": "sql",
    "mysql://": "sql",
    "mariadb://": "sql",
    "cassandra://": "cassandra",
    "mongodb://": "mongodb",
    "mongodb+srv://": "mongodb",
}


def store_of(url: str) -> str | None:
    """``sql``, ``cassandra`` or ``mongodb`` for a database URL; None for an unknown scheme."""
    return next((kind for prefix, kind in STORES.items() if url.startswith(prefix)), None)


class TableSinkConfig(ConnectorConfig):
    type: Literal["table"]
    table: str = Field(description="destination table (created from the first batch's schema)")
    mode: Literal["append", "upsert"] = Field("append", description="upsert needs 'key'")
    key: list[str] = Field([], description="primary-key columns (for upsert and delete)")
    delete_when: str | None = Field(
        None, description="SQL predicate over the batch; matching rows delete their key"
    )
    database: str | None = Field(
        None,
        description="database URL (empty: the pipeline's); cassandra://host:port/keyspace or"
        " mongodb://host:port/db land in that store",
    )
    keep_provenance: bool = Field(True, description="store _topic/_partition/_offset columns")

    @field_validator("database")
    @classmethod
    def _known_store(cls, v: str | None) -> str | None:
        if not v:
            return None
        if store_of(v) is None:
            raise ValueError(
                f"{v.split('://')[0]!r} is not a store the table sink writes (use sqlite:///path,"
                " postgresql://..., mysql://..., cassandra://host:port/keyspace or"
                " mongodb://host:port/database)"
            )
        return v

    @model_validator(mode="after")
    def _store_options(self) -> Self:
        store = store_of(self.database or "sqlite:///")
        if store != "sql" and self.delete_when:
            raise ValueError(f"delete_when works on SQL databases, not on {store} (remove it)")
        if store == "cassandra" and not (self.mode == "upsert" and self.key):
            raise ValueError(
                "a cassandra:// database writes upserts by primary key: set 'mode: upsert'"
                " and 'key: [column, ...]'"
            )
        return self


def other_store(cfg: TableSinkConfig, url: str) -> Sink | None:
    """The ``cassandra`` or ``mongodb`` sink for a URL naming one; None for SQL databases."""
    store = store_of(url)
    if store == "cassandra":
        from tidelake.sinks.cassandra import CassandraSink, CassandraSinkConfig

        return CassandraSink(
            CassandraSinkConfig(
                type="cassandra",
                url=url,
                table=cfg.table,
                key=cfg.key,
                keep_provenance=cfg.keep_provenance,
            )
        )
    if store == "mongodb":
        from tidelake.sinks.mongodb import MongoSink, MongoSinkConfig

        key = cfg.key if cfg.mode == "upsert" else []
        return MongoSink(
            MongoSinkConfig(
                type="mongodb",
                url=url,
                collection=cfg.table,
                key=key,
                keep_provenance=cfg.keep_provenance,
            )
        )
    return None


class TableSink(Sink):
    Config = TableSinkConfig
    config: TableSinkConfig
    several_writers = True

    @classmethod
    def takes_several_writers(cls, config: ConnectorConfig, pipeline: Pipeline) -> bool:
        url = config.database or pipeline.database  # type: ignore[attr-defined]
        return store_of(url) == "sql"

    store: Sink | None = None  # the cassandra or mongodb sink the database URL names

    def open(self, ctx: FlowContext) -> None:
        cfg = self.config
        if cfg.mode == "upsert" and not cfg.key:
            from tidelake.errors import ConfigError

            raise ConfigError(f"flow {ctx.flow}: sink mode 'upsert' needs 'key: [column, ...]'")
        url = ctx.pipeline.url(cfg.database or ctx.pipeline.database)
        self.store = other_store(cfg, url)
        if self.store is not None:
            self.store.open(ctx)
            return
        self.flow = ctx.owner
        self.db: Database = connect_db(url)
        self.db.load_checkpoint(self.flow)  # creates the checkpoint table if missing

    def checkpoint(self) -> Checkpoint:
        if self.store is not None:
            return self.store.checkpoint()
        return positions.positions_only(self.db.load_checkpoint(self.flow))

    def claim(self, keys: list[str]) -> Checkpoint:
        if self.store is not None:
            return self.store.claim(keys)
        with self.db.transaction(lock=f"tidelake:{self.flow}"):
            stored = self.db.load_checkpoint(self.flow)
            epochs = positions.claim(stored, keys)
            self.db.save_checkpoint(self.flow, epochs)
        return stored | epochs

    def write(self, table: pa.Table, checkpoint: Checkpoint) -> None:
        if self.store is not None:
            return self.store.write(table, checkpoint)
        cfg = self.config
        with self.db.transaction(lock=f"tidelake:{self.flow}"):
            positions.merge(self.db.load_checkpoint(self.flow), checkpoint, self.flow)
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
            self.db.save_checkpoint(self.flow, checkpoint)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
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
