"""``lake`` sink: Arrow batches -> Apache Iceberg tables, exactly once.

Guarantees:

- **Atomic with the checkpoint.** Each ``write`` makes ONE Iceberg commit per
  target table (schema evolution, data files and the flow's checkpoint in the
  snapshot summary together); a crash leaves either all of it or none of it.
  See ``tidelake.lake.checkpoints`` for how the checkpoint is stored and how a
  fan-out write over several tables is resolved on restart.
- **Several writers.** Workers of one flow commit to the same table at once, each
  storing the positions of the partitions it owns; the flow's entry in the snapshot
  summary is the merge of them. Iceberg commits are optimistic: a commit that loses a
  race reloads the table and re-checks and re-applies everything on the new state. The
  rule, checked against the table state the commit is validated against: a commit whose
  partition epochs are older than the stored ones is refused (``positions.merge`` raises
  ``Fenced``), so a worker that lost its partitions while paused lands nothing. ``claim``
  bumps the epochs with a commit of its own to every table of the flow. A partition claimed
  while no table held it (the table did not exist yet) has no epoch: the first commit that
  stores its position gives it epoch 1, and the sink carries that epoch in its later
  commits, so from then on another worker's epoch-less commit of it is refused (its worker
  restarts and claims it properly) instead of landing the same rows twice. Rows already
  landed never
  arrive here: the runner fences them (``runtime.positions``); only a fan-out write
  interrupted between tables re-fences per table.
- **Schema on write.** Tables are created from the first batch, evolved on new
  columns and promotable types; rows that do not fit go to the dead-letter
  topic with the reason (``tidelake.lake.schema``).
- **Current state** (``mode: upsert``). The batch is reduced to its last row per
  ``key``; stored rows with those keys are deleted copy-on-write and the last
  rows appended, except keys whose last row matches ``delete_when``, which are
  only deleted — all in the same single commit as the checkpoint, so the table
  holds one row per key and a replayed batch converges to the same state
  (``tidelake.lake.upsert`` has the details and the cost). Rows with a null key
  column go to the dead-letter topic.

Config::

    sink:
      type: lake
      table: events_{kind}          # or a plain name; {col} fans out by column value
      partition_by: auto            # auto (day of a ts-like column) | none | [day(ts), region]
      maintenance: {compact_every: 100, keep_snapshots: 100}
      mode: append                  # append (history) | upsert (current state by key)
      key: [id]                     # upsert: the key columns
      delete_when: "_op = 'd'"      # upsert: SQL predicate; matching rows delete their key
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import replace
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table import Transaction as IcebergTransaction
from pyiceberg.transforms import Transform, parse_transform

from tidelake import column_templates
from tidelake.errors import ConfigError
from tidelake.lake import checkpoints, pyiceberg_internals, schema, upsert
from tidelake.lake.catalog import guard, identifier_part, namespace, open_catalog
from tidelake.lake.checkpoints import StoredCheckpoint
from tidelake.lake.maintenance import Maintainer, MaintenancePolicy
from tidelake.lake.pyiceberg_internals import Transaction
from tidelake.runtime import positions
from tidelake.runtime.base import Checkpoint, ConnectorConfig, FlowContext, Sink

log = logging.getLogger(__name__)

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SPEC = re.compile(r"^\s*(\w+)\s*(?:\(\s*(?:(\d+)\s*,\s*)?(\w+)\s*\))?\s*$")
_TS_NAMES = ("ts", "event_time", "event_ts", "timestamp", "time", "created_at", "date")
_RETRIES = 30


class LakeSinkConfig(ConnectorConfig):
    type: Literal["lake"] = "lake"
    table: str = Field(description="table name, or a template like events_{kind} (fan-out)")
    partition_by: str | list[str] = Field(
        "auto", description="auto (day of a ts-like column), none, or [day(ts), bucket(8, id)]"
    )
    maintenance: MaintenancePolicy = Field(default_factory=MaintenancePolicy)
    properties: dict[str, str] = Field({}, description="extra Iceberg table properties at creation")
    mode: Literal["append", "upsert"] = Field(
        "append", description="append: every row (history); upsert: one row per key"
    )
    key: list[str] = Field([], description="key columns (mode: upsert)")
    delete_when: str | None = Field(
        None, description="SQL predicate over the batch; matching rows delete their key (upsert)"
    )

    @field_validator("table")
    @classmethod
    def _table_ok(cls, v: str) -> str:
        fields = column_templates.fields(v)
        if not fields and not _PLAIN.match(v):
            raise ValueError("use letters, digits and '_' (or a template such as events_{kind})")
        return v

    @field_validator("partition_by")
    @classmethod
    def _spec_ok(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, str):
            if v not in ("auto", "none"):
                raise ValueError("use auto, none or a list such as [day(ts), region]")
            return v
        for spec in v:
            if not _SPEC.match(spec):
                raise ValueError(f"{spec!r}: use column, day(col), hour(col), bucket(N, col) ...")
        return v

    @model_validator(mode="after")
    def _upsert_ok(self) -> LakeSinkConfig:
        if self.mode == "upsert" and not self.key:
            raise ValueError("mode: upsert needs 'key: [column, ...]'")
        if self.mode == "append" and (self.key or self.delete_when):
            raise ValueError("'key' and 'delete_when' need mode: upsert")
        return self


class LakeSink(Sink):
    Config = LakeSinkConfig
    config: LakeSinkConfig
    several_writers = True

    def open(self, ctx: FlowContext) -> None:
        self.ctx = ctx
        self.catalog: Catalog = open_catalog(ctx.pipeline)
        self.namespace = namespace(ctx.pipeline)
        self.fields = column_templates.fields(self.config.table)
        self.maintainer = Maintainer(self.config.maintenance)
        self._tables: dict[str, Table] = {}
        self._last_table: str | None = None if self.fields else self.config.table
        self._seq, self._committed = 0, {}
        self._claimed: set[str] = set()  # partitions claimed through this sink
        self._first: Checkpoint = {}  # epochs this sink gave partitions claimed without one
        self._written: tuple[tuple[Schema, PartitionSpec, int], list[DataFile]] | None = None
        self._committed = self._stored()

    # -- checkpoint ---------------------------------------------------------------

    def _flow_tables(self) -> list[str]:
        if not self.fields:
            return [self.config.table]
        return [ident[-1] for ident in self.catalog.list_tables(self.namespace)]

    def checkpoint(self) -> Checkpoint:
        """The flow's committed position, read from the lake (not from memory)."""
        return positions.positions_only(self._stored())

    def _stored(self) -> Checkpoint:
        """The flow's committed positions and partition epochs."""
        entries: list[tuple[str, StoredCheckpoint]] = []
        for name in self._flow_tables():
            table = self._load(name, refresh=True)
            entry = checkpoints.stored(table.metadata, self.ctx.flow) if table else None
            if entry is not None:
                entries.append((name, entry))
        seq, committed = checkpoints.resolve(e for _, e in entries)
        if entries:
            self._last_table = max(entries, key=lambda x: x[1].seq)[0]
        self._seq = max(self._seq, seq)
        return committed

    def claim(self, keys: list[str]) -> Checkpoint:
        self._claimed.update(keys)
        for name in self._flow_tables():
            if self._load(name, refresh=True) is not None:
                self._commit(name, pa.table({}), None, claim=keys)
        return self._stored()

    # -- write --------------------------------------------------------------------

    def write(self, table: pa.Table, checkpoint: Checkpoint) -> None:
        groups = self._route(table) if self.fields else {self.config.table: table}
        groups = {name: rows for name, rows in groups.items() if rows.num_rows}
        if not groups:
            if self._last_table is None or self._load(self._last_table) is None:
                self._committed = dict(checkpoint)  # nothing to land and nowhere to store it yet
                return
            groups = {self._last_table: table.slice(0, 0)}
        seq = self._seq + 1
        names = sorted(groups)
        for i, name in enumerate(names):
            last = i == len(names) - 1
            entry = StoredCheckpoint(seq, dict(checkpoint), dict(self._committed), last)
            self._commit(name, groups[name], entry)
        self._seq, self._committed, self._last_table = seq, dict(checkpoint), names[-1]

    def _route(self, table: pa.Table) -> dict[str, pa.Table]:
        """Split a batch by its table-name template (vectorized: one filter per target table)."""
        missing = [f for f in self.fields if f not in table.column_names]
        if missing:
            if table.num_rows:
                self.ctx.dead_letter(
                    table,
                    f"table template {self.config.table!r} needs column(s) {', '.join(missing)}",
                )
            return {}
        names = column_templates.render(self.config.table, table)
        names = pc.replace_substring_regex(pc.utf8_lower(names), r"[^a-z0-9_]", "_")
        valid = pc.is_valid(names)
        if not pc.all(valid).as_py():
            self.ctx.dead_letter(
                table.filter(pc.invert(valid)),
                f"table template {self.config.table!r}: a column it uses is null",
            )
        encoded = pc.dictionary_encode(names).combine_chunks()
        out = {}
        for i, name in enumerate(encoded.dictionary.to_pylist()):
            out[identifier_part(name)] = table.filter(pc.equal(encoded.indices, i))
        return out

    def _commit(
        self,
        name: str,
        rows: pa.Table,
        entry: StoredCheckpoint | None,
        claim: list[str] | None = None,
    ) -> None:
        self._written = None
        for attempt in range(_RETRIES):
            table = self._load(name) or self._create(name, rows)
            try:
                if claim is not None:
                    self._claim_once(table, claim)
                else:
                    assert entry is not None
                    self._first |= self._commit_once(table, rows, entry)
                break
            except CommitFailedException:
                if attempt == _RETRIES - 1:
                    raise
                log.info("lake table %s changed under flow %s; retrying", name, self.ctx.flow)
                counts = self.ctx.metrics.counts  # commit contention, at /metrics
                counts["lake_commit_retries"] = counts.get("lake_commit_retries", 0) + 1
                self._load(name, refresh=True)
                time.sleep(random.uniform(0.02, 0.05 * (attempt + 1)))
        try:
            self.maintainer.after_commit(self._tables[name])
        except Exception:  # the data is committed; maintenance is retried at the next schedule
            self.ctx.metrics.errors += 1
            log.exception("flow %s: maintenance of lake table %s failed", self.ctx.flow, name)

    def _claim_once(self, table: Table, keys: list[str]) -> None:
        """Bump the epochs of ``keys`` in the flow's entry: one commit without data."""
        flow = self.ctx.flow
        with Transaction(table) as tx:
            meta = tx.table_metadata
            held = checkpoints.stored(meta, flow) or StoredCheckpoint(0, {})
            claimed = held.positions | positions.claim(held.positions, keys)
            entry = StoredCheckpoint(held.seq, claimed, held.base, held.last)
            props = checkpoints.carried(meta) | {checkpoints.PREFIX + flow: entry.to_json()}
            tx.append(
                pa.Table.from_batches([], meta.schema().as_arrow()), snapshot_properties=props
            )

    def _commit_once(self, table: Table, rows: pa.Table, entry: StoredCheckpoint) -> Checkpoint:
        """Commit ``rows`` with ``entry``; returns the first epochs it gave (see the module)."""
        flow = self.ctx.flow
        with Transaction(table) as tx:
            meta = tx.table_metadata
            held = checkpoints.stored(meta, flow)
            entry, first = self._with_epochs(entry, held)
            if held is not None:
                merged = positions.merge(held.positions, entry.positions, flow)
                entry = StoredCheckpoint(max(held.seq, entry.seq), merged, entry.base, entry.last)
                if self.fields:  # a fan-out write interrupted between tables is re-read whole
                    rows = positions.fence(rows, held.positions)
            batch_schema = schema.normalize_schema(rows.schema)
            changes = schema.evolution(batch_schema, meta.schema())
            if changes is not None:
                with tx.update_schema() as update:
                    update.union_by_name(changes)
            props = checkpoints.carried(meta) | {
                checkpoints.PREFIX + flow: entry.to_json(),
                checkpoints.WRITER: flow,
            }
            if self.config.mode == "upsert":
                self._upsert(tx, table, rows, props)
                return first
            pyiceberg_internals.append_files(tx, self._data_files(tx, table, rows), props)
        return first

    def _with_epochs(
        self, entry: StoredCheckpoint, held: StoredCheckpoint | None
    ) -> tuple[StoredCheckpoint, Checkpoint]:
        """``entry`` with the epochs this sink gave before, and epoch 1 for each partition it
        stores that has an epoch nowhere (claimed while no table held it)."""
        mine, stored = entry.positions, held.positions if held else {}
        given = {
            e: v
            for e, v in self._first.items()
            if e not in mine and e.removesuffix(positions.EPOCH) in mine
        }
        first = {
            positions.epoch_key(k): 1
            for k in mine
            if k in self._claimed
            and positions.epoch_key(k) not in mine
            and positions.epoch_key(k) not in given
            and positions.epoch_key(k) not in stored
        }
        if not given and not first:
            return entry, {}
        return replace(entry, positions=mine | given | first), first

    def _data_files(self, tx: IcebergTransaction, table: Table, rows: pa.Table) -> list[DataFile]:
        """``rows`` fitted to the table and written as Parquet data files, once per commit: an
        attempt retried after another writer won the race reuses the files (and dead letters)
        of the first while the table's schema and partition spec are still the same (and
        the fan-out fence kept the same rows: it only drops rows)."""
        meta = tx.table_metadata
        layout = (meta.schema(), meta.spec(), rows.num_rows)
        if self._written is None or self._written[0] != layout:
            fitted = schema.conform(rows, meta.schema())
            for rejected, reason in fitted.rejected:
                self.ctx.dead_letter(rejected, reason)
            data = fitted.table
            files = pyiceberg_internals.data_files(meta, data, table.io) if data.num_rows else []
            self._written = (layout, files)
        return self._written[1]

    def _upsert(
        self, tx: IcebergTransaction, table: Table, rows: pa.Table, props: dict[str, str]
    ) -> None:
        """Stage delete-by-key + append of the last row per key (``tidelake.lake.upsert``)."""
        key = self.config.key
        missing = [k for k in key if k not in tx.table_metadata.schema().column_names]
        if missing and rows.num_rows:
            raise ConfigError(
                f"flow {self.ctx.flow}: lake sink key column(s) {', '.join(missing)} are not in "
                f"lake table {table.name()[-1]} nor in the batch (columns: "
                f"{', '.join(rows.column_names)}); fix 'key'"
            )
        changes = upsert.reduce_changes(rows, key, self.config.delete_when)
        if changes.null_keys.num_rows:
            self.ctx.dead_letter(
                changes.null_keys, f"upsert key {', '.join(key)}: a key column is null"
            )
        target = tx.table_metadata.schema()
        fitted = schema.conform(changes.upserts, target)
        doomed = schema.conform(changes.deletes.select(key), target)  # only the key matters
        for rejected, reason in fitted.rejected + doomed.rejected:
            self.ctx.dead_letter(rejected, reason)
        upsert.stage(tx, table.io, key, fitted.table, doomed.table, props)

    # -- tables -------------------------------------------------------------------

    def _load(self, name: str, refresh: bool = False) -> Table | None:
        table = self._tables.get(name)
        if table is not None:
            return table.refresh() if refresh else table
        try:
            table = self.catalog.load_table((self.namespace, name))
        except NoSuchTableError:
            return None
        self._tables[name] = guard(table)
        return table

    def _create(self, name: str, rows: pa.Table) -> Table:
        arrow = schema.normalize_schema(rows.schema)
        if not len(arrow):
            raise ConfigError(
                f"flow {self.ctx.flow}: cannot create lake table {name!r} from a batch without "
                "typed columns (every column is empty/null); add columns or create the table first"
            )
        properties = self.config.maintenance.table_properties() | self.config.properties
        try:
            created = self.catalog.create_table(
                (self.namespace, name), schema=arrow, properties=properties
            )
            specs = self._partition_specs(arrow)
            if specs:
                with created.update_spec() as update:
                    for transform, column in specs:
                        update.add_field(column, transform)
        except TableAlreadyExistsError:
            created = self.catalog.load_table((self.namespace, name))
        self._tables[name] = created = guard(created)
        return created

    def _partition_specs(self, arrow: pa.Schema) -> list[tuple[Transform[Any, Any], str]]:
        by = self.config.partition_by
        if by == "none":
            return []
        if by == "auto":
            column = _ts_column(arrow)
            return [(parse_transform("day"), column)] if column else []
        specs = []
        for spec in by:
            match = _SPEC.match(spec)
            assert match is not None  # validated with the config
            fn, arg, column = match.groups()
            if column is None:
                fn, column = "identity", fn
            if column not in arrow.names:
                raise ConfigError(
                    f"flow {self.ctx.flow}: partition_by {spec!r}: no column {column!r} in the "
                    f"data (columns: {', '.join(arrow.names)})"
                )
            specs.append((parse_transform(f"{fn}[{arg}]" if arg else fn), column))
        return specs


def _ts_column(arrow: pa.Schema) -> str | None:
    """The event-time column to partition by day: a timestamp/date with a conventional name."""
    temporal = [
        f.name for f in arrow if pa.types.is_timestamp(f.type) or pa.types.is_date32(f.type)
    ]
    for name in _TS_NAMES:
        if name in temporal:
            return name
    return next((n for n in temporal if n.endswith(("_ts", "_time", "_at"))), None)


__all__ = ["LakeSink", "LakeSinkConfig"]
