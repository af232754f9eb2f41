"""``cdc``: change data capture as Debezium-compatible envelopes (see ``envelope.py``).

Three engines behind one source and one output shape:

- ``native`` (default): PostgreSQL logical replication with the built-in ``pgoutput``
  plugin, read over SQL (no Java). The slot is advanced only after the sink committed.
- ``debezium``: Debezium's PostgreSQL or MySQL connector (by the database URL) on Kafka
  Connect, registered over REST; its topics are read from the pipeline's (Kafka) broker.
- ``sqlite``: triggers that record changes in a ``_tidelake_changes`` table.
- ``mysql``: the MySQL/MariaDB row-based binlog, read as a replica (no Java).

Delivery: the sink stores the source position (commit LSN, change sequence or topic
offsets) with the rows, so a flow ``cdc -> unwrap -> table`` lands every change exactly
once across crashes; the upstream acknowledgement (slot advance, pruning) trails it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tidelake import extras
from tidelake.runtime.base import Batch, Checkpoint, ConnectorConfig, FlowContext, Source
from tidelake.sources.cdc.envelope import default_name

__all__ = ["CdcConfig", "CdcSource", "default_name", "drop_slot"]


class CdcConfig(ConnectorConfig):
    type: Literal["cdc"]
    engine: Literal["native", "debezium", "sqlite", "mysql"] = Field(
        "native",
        description="native: pgoutput over SQL; debezium: Kafka Connect; sqlite: triggers;"
        " mysql: the MySQL/MariaDB binlog",
    )
    database: str | None = Field(None, description="database URL (default: the pipeline's)")
    tables: list[str] = Field(min_length=1, description="tables to capture, e.g. [public.movies]")
    topic_prefix: str = Field("dbserver1", description="first part of each event's topic name")
    slot: str | None = Field(
        None, description="replication slot (default: tidelake_<pipeline>_<flow>)"
    )
    publication: str | None = Field(None, description="publication (default: the slot name)")
    snapshot: Literal["initial", "never"] = Field(
        "initial", description="initial: emit existing rows as op 'r' on first start"
    )
    slot_lag_warning_mb: float = Field(
        1024, gt=0, description="warn when the slot retains more WAL than this"
    )
    replica_identity_full: bool = Field(
        False, description="set REPLICA IDENTITY FULL: updates and deletes carry the old row"
    )
    decimal_handling: Literal["double", "string"] = Field(
        "double", description="numeric columns as JSON numbers or strings (Debezium's mode)"
    )
    poll_interval: float = Field(0.1, gt=0, description="seconds between polls when idle")
    connect_url: str = Field("http://127.0.0.1:8083", description="Kafka Connect REST (debezium)")
    connector: str | None = Field(None, description="connector name (default: the slot name)")
    connector_config: dict[str, str] = Field(
        {}, description="extra/overriding Debezium connector settings"
    )
    connector_timeout: float = Field(120, gt=0, description="seconds to wait for RUNNING")

    def qualified_tables(self, default_schema: str) -> list[tuple[str, str]]:
        out = []
        for t in self.tables:
            schema, _, name = t.rpartition(".")
            out.append((schema or default_schema, name))
        return out


class CdcSource(Source):
    """Dispatches to the engine named by ``engine``; every engine emits the same columns."""

    Config = CdcConfig
    config: CdcConfig

    def __init__(self, config: CdcConfig) -> None:
        super().__init__(config)
        engine: Source
        if config.engine == "native":
            postgres = extras.load("tidelake.sources.cdc.postgres", "cdc engine 'native'")
            engine = postgres.PostgresCdc(config)
        elif config.engine == "sqlite":
            from tidelake.sources.cdc.sqlite import SqliteCdc

            engine = SqliteCdc(config)
        elif config.engine == "mysql":
            from tidelake.sources.cdc.mysql import MysqlCdc

            engine = MysqlCdc(config)
        else:
            debezium = extras.load("tidelake.sources.cdc.debezium", "cdc engine 'debezium'")
            engine = debezium.DebeziumCdc(config)
        self.engine = engine

    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        self.engine.open(ctx, checkpoint)

    def read(self, max_records: int, timeout: float) -> Batch | None:
        return self.engine.read(max_records, timeout)

    def committed(self, checkpoint: Checkpoint) -> None:
        self.engine.committed(checkpoint)

    def close(self) -> None:
        self.engine.close()


def drop_slot(database_url: str, slot: str, publication: str | None = None) -> bool:
    """Drop a logical replication slot (and a publication) so PostgreSQL frees its WAL.

    Returns True when the slot existed. Raises ConnectorError when the slot is in use.
    """
    from tidelake.sources.cdc.postgres import drop_slot as _drop

    return _drop(database_url, slot, publication)
