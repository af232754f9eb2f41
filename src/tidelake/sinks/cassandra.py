"""Land batches in an Apache Cassandra table, effectively once for keyed tables.

Every write is an upsert by primary key, so a re-delivered batch overwrites itself with the
same values. Rows go out as a prepared ``INSERT`` executed concurrently; within a batch the
last row of a key wins (Cassandra would otherwise apply concurrent writes of one key in any
order). The flow's positions are written to ``<keyspace>.tidelake_checkpoints`` (keyed by
pipeline and flow) only after every row of the batch was acknowledged (rows below the
stored positions never arrive: the runner fences them), so a replay after a crash
rewrites the same rows. Values that do not fit the column type, and rows with a
null key, go to the dead-letter topic; the flow keeps running.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from tidelake import extras
from tidelake.errors import ConfigError, ConnectorError
from tidelake.formats.json import nested_to_json
from tidelake.runtime.base import PROVENANCE, Checkpoint, ConnectorConfig, FlowContext, Sink
from tidelake.sinks.fit import fit, last_per_key
from tidelake.store_types import column_type

CHECKPOINTS = "tidelake_checkpoints"

#: CQL type -> the DuckDB type a value must cast to (``fit``).
_DUCK = {
    "tinyint": "TINYINT",
    "smallint": "SMALLINT",
    "int": "INTEGER",
    "bigint": "BIGINT",
    "counter": "BIGINT",
    "varint": "HUGEINT",
    "float": "FLOAT",
    "double": "DOUBLE",
    "decimal": "DOUBLE",
    "boolean": "BOOLEAN",
    "text": "VARCHAR",
    "varchar": "VARCHAR",
    "ascii": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "date": "DATE",
    "blob": "BLOB",
    "uuid": "UUID",
    "timeuuid": "UUID",
}


class CassandraSinkConfig(ConnectorConfig):
    type: Literal["cassandra"]
    url: str = Field(description="cassandra://host[:port][,host2...]/keyspace")
    table: str = Field(description="destination table (created from the first batch's schema)")
    key: list[str] = Field(description="primary key: partition key columns, then clustering")
    partition_key: int = Field(1, ge=1, description="how many leading key columns partition")
    consistency: str = Field("LOCAL_QUORUM", description="consistency level of every write")
    ttl: int | None = Field(None, ge=1, description="seconds before written rows expire")
    replication_factor: int = Field(1, ge=1, description="for a keyspace created by the sink")
    concurrency: int = Field(64, ge=1, le=1024, description="writes in flight at once")
    keep_provenance: bool = Field(True, description="store _topic/_partition/_offset columns")


def parse_url(url: str) -> tuple[list[str], int, str]:
    """(hosts, port, keyspace) of ``cassandra://h1[:port][,h2]/keyspace``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "cassandra" or not parts.netloc or not parts.path.strip("/"):
        raise ConfigError(
            f"cassandra url {url!r} must look like cassandra://127.0.0.1:9042/keyspace"
        )
    hosts, port = [], 9042
    for item in parts.netloc.split(","):
        host, _, p = item.partition(":")
        hosts.append(host)
        if p:
            port = int(p)
    return hosts, port, _name(parts.path.strip("/"))


def _name(name: str) -> str:
    """A plain name, lower-cased (how Cassandra stores unquoted names)."""
    if not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
        raise ConfigError(f"{name!r} is not a valid Cassandra name (letters, digits, _)")
    return name.lower()


def _q(name: str) -> str:
    """A quoted column name (``_topic`` is not a valid unquoted CQL name)."""
    return f'"{_name(name)}"'


def cql_type(t: pa.DataType) -> str:
    """The CQL type a new column of Arrow type ``t`` gets."""
    return column_type(t, "cassandra")


class CassandraSink(Sink):
    Config = CassandraSinkConfig
    config: CassandraSinkConfig

    def open(self, ctx: FlowContext) -> None:
        extras.load("cassandra", "the cassandra sink")
        from cassandra import ConsistencyLevel
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

        cfg = self.config
        if not cfg.key:
            raise ConfigError(f"flow {ctx.flow}: the cassandra sink needs 'key: [column, ...]'")
        if cfg.consistency.upper() not in ConsistencyLevel.name_to_value:
            names = ", ".join(sorted(ConsistencyLevel.name_to_value))
            raise ConfigError(f"flow {ctx.flow}: consistency {cfg.consistency!r} (use: {names})")
        self.level = ConsistencyLevel.name_to_value[cfg.consistency.upper()]
        hosts, port, self.keyspace = parse_url(ctx.pipeline.url(cfg.url))
        self.table = _name(cfg.table)
        self.key = [k.lower() for k in cfg.key]
        self.pipeline, self.flow = ctx.pipeline.name, ctx.flow
        self.dead_letter = ctx.dead_letter
        self.cluster = Cluster(
            hosts,
            port=port,
            connect_timeout=10,
            execution_profiles={
                EXEC_PROFILE_DEFAULT: ExecutionProfile(
                    load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
                    consistency_level=self.level,
                    request_timeout=30,
                )
            },
        )
        try:
            self.session = self.cluster.connect()
        except Exception as e:
            self.cluster.shutdown()
            raise ConnectorError(
                f"cannot connect to Cassandra at {','.join(hosts)}:{port}: {e} "
                "(is it running? `tidelake infra up cassandra` starts a local one)"
            ) from e
        self._ddl(
            f"CREATE KEYSPACE IF NOT EXISTS {self.keyspace} WITH replication ="
            f" {{'class': 'SimpleStrategy', 'replication_factor': {cfg.replication_factor}}}"
        )
        self._ddl(
            f"CREATE TABLE IF NOT EXISTS {self.keyspace}.{CHECKPOINTS} (pipeline text, flow text,"
            " position text, next_offset bigint, PRIMARY KEY ((pipeline, flow), position))"
        )
        self._save = self.session.prepare(
            f"INSERT INTO {self.keyspace}.{CHECKPOINTS} (pipeline, flow, position, next_offset)"
            " VALUES (?, ?, ?, ?)"
        )
        self._load = self.session.prepare(
            f"SELECT position, next_offset FROM {self.keyspace}.{CHECKPOINTS}"
            " WHERE pipeline = ? AND flow = ?"
        )
        self.columns = self._columns()
        if self.columns:
            self._check_key()
        self._insert: tuple[tuple[str, ...], Any] | None = None

    def _ddl(self, cql: str) -> None:
        self.session.execute(cql, timeout=60)

    def _columns(self) -> dict[str, str]:
        """Column -> CQL type of the destination (empty if missing); sets ``self._pk``."""
        rows = list(
            self.session.execute(
                "SELECT column_name, type, kind, position FROM system_schema.columns"
                " WHERE keyspace_name = %s AND table_name = %s",
                (self.keyspace, self.table),
            )
        )
        keyed = [r for r in rows if r.kind in ("partition_key", "clustering")]
        keyed.sort(key=lambda r: (r.kind != "partition_key", r.position))
        self._pk = [r.column_name for r in keyed]
        return {r.column_name: r.type for r in rows}

    def _check_key(self) -> None:
        if self._pk != self.key:
            raise ConfigError(
                f"flow {self.flow}: table {self.keyspace}.{self.table} has primary key"
                f" ({', '.join(self._pk)}) but the sink declares key: [{', '.join(self.key)}]"
                " (change 'key' to match, or land in a new table)"
            )

    def _ensure_table(self, schema: pa.Schema) -> None:
        """Create the table from ``schema`` or add the columns it lacks (schema evolution)."""
        if not self.columns:
            missing = [k for k in self.key if k not in schema.names]
            if missing:
                raise ConfigError(
                    f"flow {self.flow}: key column {missing[0]!r} is not in the batch"
                    f" (columns: {', '.join(schema.names)})"
                )
            n = self.config.partition_key
            part, clustering = self.key[:n], self.key[n:]
            pk = f"({', '.join(map(_q, part))})" + "".join(f", {_q(c)}" for c in clustering)
            cols = ", ".join(f"{_q(f.name)} {cql_type(f.type)}" for f in schema)
            self._ddl(
                f"CREATE TABLE IF NOT EXISTS {self.keyspace}.{self.table} ({cols},"
                f" PRIMARY KEY ({pk}))"
            )
        else:
            for f in schema:
                if f.name not in self.columns:
                    self._ddl(
                        f"ALTER TABLE {self.keyspace}.{self.table}"
                        f" ADD {_q(f.name)} {cql_type(f.type)}"
                    )
        self.columns = self._columns()
        self._check_key()

    def checkpoint(self) -> Checkpoint:
        rows = self.session.execute(self._load, (self.pipeline, self.flow))
        return {r.position: int(r.next_offset) for r in rows}

    def write(self, table: pa.Table, checkpoint: Checkpoint) -> None:
        if table.num_rows:
            self._write_rows(table)
        self._run(self._save, [(self.pipeline, self.flow, k, v) for k, v in checkpoint.items()])

    def _write_rows(self, table: pa.Table) -> None:
        if not self.config.keep_provenance:
            table = table.drop_columns([c for c in PROVENANCE if c in table.column_names])
        table = nested_to_json(table.rename_columns([c.lower() for c in table.column_names]))
        if set(table.column_names) - set(self.columns):
            self._ensure_table(table.schema)
        targets = {c: _DUCK[t] for c, t in self.columns.items() if t in _DUCK}
        table, rejected = fit(table, targets, self.key)
        for rows, reason in rejected:
            self.dead_letter(rows, f"cassandra {self.keyspace}.{self.table}: {reason}")
        table = last_per_key(table, self.key)
        if not table.num_rows:
            return
        names = tuple(table.column_names)
        if self._insert is None or self._insert[0] != names:
            ttl = f" USING TTL {self.config.ttl}" if self.config.ttl else ""
            stmt = self.session.prepare(
                f"INSERT INTO {self.keyspace}.{self.table} ({', '.join(map(_q, names))})"
                f" VALUES ({', '.join('?' * len(names))}){ttl}"
            )
            self._insert = (names, stmt)
        rows = list(zip(*(c.to_pylist() for c in table.columns), strict=True))
        failed = self._run(self._insert[1], rows)
        if failed:
            bad = table.take([i for i, _ in failed])
            self.dead_letter(bad, f"cassandra rejected the row: {failed[0][1]}")

    def _run(self, stmt: Any, rows: list[tuple[Any, ...]]) -> list[tuple[int, str]]:
        """Execute ``stmt`` for every row, ``concurrency`` at once; wait for all.

        Rows the server refuses as invalid come back as (index, reason); any other failure
        (timeout, unavailable) raises, so the batch and its checkpoint are not stored."""
        from cassandra import InvalidRequest
        from cassandra.concurrent import execute_concurrent_with_args

        results = execute_concurrent_with_args(
            self.session,
            stmt,
            rows,
            concurrency=self.config.concurrency,
            raise_on_first_error=False,
        )
        failed = []
        for i, (ok, res) in enumerate(results):
            if ok:
                continue
            if isinstance(res, InvalidRequest | TypeError | ValueError | OverflowError):
                failed.append((i, f"{type(res).__name__}: {res}"))
            else:
                raise ConnectorError(f"cassandra write failed: {type(res).__name__}: {res}")
        return failed

    def close(self) -> None:
        if hasattr(self, "cluster"):
            self.cluster.shutdown()
