"""SQLite CDC: triggers record every change in ``_tidelake_changes``; the source reads it in order.

For each captured table, ``AFTER INSERT/UPDATE/DELETE`` triggers append
``(seq, tbl, op, before, after, ts_ms)`` rows, the images built with ``json_object`` over the
columns ``PRAGMA table_info`` lists when the triggers are installed. SQLite has one writer
at a time, so ``seq`` (AUTOINCREMENT) order is commit order and a position is one number:
``{"sqlite:<file name>": seq}``.

- **Schema changes**: when ``PRAGMA schema_version`` moves, triggers of tables whose columns
  changed are re-installed. Rows written between the ``ALTER TABLE`` and that moment
  (at most one poll) lack the new column in their images.
- **Initial snapshot**: one read transaction takes the highest ``seq`` and the current rows,
  so every later change (``seq`` above it) follows the snapshot exactly once.
- **Pruning**: each reader (flow) records the position its sink committed in
  ``_tidelake_cdc_consumers``; change rows every reader has committed are deleted.
- Value mapping: ``json_object`` semantics (REAL -> JSON number, INTEGER -> number,
  TEXT -> string); BLOB columns are captured as hex text.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tidelake.errors import ConfigError
from tidelake.identifiers import quote as q
from tidelake.runtime.base import Batch, Checkpoint, FlowContext, Source
from tidelake.sources.cdc.envelope import SCHEMA, VERSION, default_name, empty, now_ms
from tidelake.sqlite_wal import open_wal

if TYPE_CHECKING:
    from tidelake.sources.cdc import CdcConfig

CHANGES = "_tidelake_changes"
CONSUMERS = "_tidelake_cdc_consumers"
TRIGGERS = "_tidelake_cdc_triggers"
_NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def install(conn: sqlite3.Connection, table: str) -> list[tuple[str, str, int]]:
    """(Re)create the capture triggers of ``table``; returns its columns (name, type, pk)."""
    cols = [
        (r[1], str(r[2]).upper(), int(r[5])) for r in conn.execute(f"PRAGMA table_info({q(table)})")
    ]
    if not cols:
        raise ConfigError(
            f"cdc: SQLite table {table!r} does not exist (create it, or fix 'tables')"
        )

    def image(row: str) -> str:
        parts = []
        for name, ctype, _ in cols:
            value = f"{row}.{q(name)}"
            parts.append(f"{lit(name)}, " + (f"hex({value})" if "BLOB" in ctype else value))
        return f"json_object({', '.join(parts)})"

    spec = {
        "ins": ("INSERT", "'c'", "NULL", image("NEW")),
        "upd": ("UPDATE", "'u'", image("OLD"), image("NEW")),
        "del": ("DELETE", "'d'", image("OLD"), "NULL"),
    }
    for suffix, (event, op, before, after) in spec.items():
        trigger = q(f"_tidelake_cdc_{table}_{suffix}")
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        conn.execute(
            f"CREATE TRIGGER {trigger} AFTER {event} ON {q(table)} BEGIN"
            f" INSERT INTO {CHANGES} (tbl, op, before, after, ts_ms)"
            f" VALUES ({lit(table)}, {op}, {before}, {after}, {_NOW_MS}); END"
        )
    signature = ",".join(f"{n}:{t}:{p}" for n, t, p in cols)
    conn.execute(f"INSERT OR REPLACE INTO {TRIGGERS} VALUES (?, ?)", (table, signature))
    return cols


class SqliteCdc(Source):
    """The ``sqlite`` engine of the ``cdc`` source."""

    def __init__(self, config: CdcConfig) -> None:
        super().__init__(config)
        self.config: CdcConfig = config

    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        cfg = self.config
        url = ctx.pipeline.url(cfg.database or ctx.pipeline.database)
        if not url.startswith("sqlite:///"):
            raise ConfigError(
                f"flow {ctx.flow}: cdc engine 'sqlite' needs a 'sqlite:///path.db' database"
            )
        self.path = url.removeprefix("sqlite:///")
        self.db = Path(self.path).stem
        self.key = f"sqlite:{Path(self.path).name}"
        self.consumer = cfg.slot or default_name(ctx.pipeline.name, ctx.flow)
        # SQLite has one schema; a qualifier in `tables` (e.g. public.movies) names the schema
        # part of the topic, so one pipeline file yields the same topics on PostgreSQL.
        self.schemas = {name: schema for schema, name in cfg.qualified_tables("main")}
        self.tables = list(self.schemas)
        self.conn = open_wal(self.path)
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {CHANGES} (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " tbl TEXT NOT NULL, op TEXT NOT NULL, before JSON, after JSON, ts_ms INTEGER)"
        )
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {CONSUMERS} (consumer TEXT PRIMARY KEY, seq INTEGER)"
        )
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TRIGGERS} (tbl TEXT PRIMARY KEY, columns TEXT)"
        )
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._sync_triggers(force=False)
        finally:
            self.conn.execute("COMMIT")
        stored = checkpoint.get(self.key)
        self._snapshot: _Snapshot | None = None
        if stored is not None:
            self.position = stored
        elif cfg.snapshot == "initial":
            self._snapshot = _Snapshot(self)
            self.position = self._snapshot.start
        else:
            self.position = self._max_seq(self.conn)
        self.conn.execute(
            f"INSERT INTO {CONSUMERS} VALUES (?, ?) ON CONFLICT (consumer) DO UPDATE"
            " SET seq = excluded.seq",
            (self.consumer, self.position),
        )
        self._select = self._query()

    @staticmethod
    def _max_seq(conn: sqlite3.Connection) -> int:
        return int(conn.execute(f"SELECT coalesce(max(seq), 0) FROM {CHANGES}").fetchone()[0])

    def _sync_triggers(self, force: bool) -> None:
        """Install missing triggers and re-install those of tables whose columns changed."""
        known = dict(self.conn.execute(f"SELECT tbl, columns FROM {TRIGGERS}").fetchall())
        self.columns: dict[str, list[tuple[str, str, int]]] = {}
        for table in self.tables:
            cols = [
                (r[1], str(r[2]).upper(), int(r[5]))
                for r in self.conn.execute(f"PRAGMA table_info({q(table)})")
            ]
            signature = ",".join(f"{n}:{t}:{p}" for n, t, p in cols)
            if force or known.get(table) != signature or not cols:
                cols = install(self.conn, table)
            self.columns[table] = cols
        self._schema_version = self.conn.execute("PRAGMA schema_version").fetchone()[0]

    def key_expr(self, image: str) -> str:
        """SQL for the key JSON of a change row, per table (NULL for tables without a PK)."""
        cases = []
        for table, cols in self.columns.items():
            pk = sorted((p, n) for n, _, p in cols if p)
            if pk:
                parts = ", ".join(
                    f"{lit(n)}, json_extract({image}, {lit('$.' + q(n))})" for _, n in pk
                )
                cases.append(f"WHEN {lit(table)} THEN json_object({parts})")
        return f"CASE tbl {' '.join(cases)} END" if cases else "NULL"

    def _schema_expr(self) -> str:
        cases = " ".join(f"WHEN {lit(t)} THEN {lit(s)}" for t, s in self.schemas.items())
        return f"CASE tbl {cases} ELSE 'main' END"

    def _query(self) -> str:
        schema = self._schema_expr()
        source = (
            f"json_object('version', {lit(VERSION)}, 'connector', 'sqlite', 'name',"
            f" {lit(self.config.topic_prefix)}, 'ts_ms', ts_ms, 'snapshot', 'false',"
            f" 'db', {lit(self.db)}, 'schema', {schema}, 'table', tbl, 'txId', NULL, 'lsn', seq)"
        )
        topic = f"{lit(self.config.topic_prefix + '.')} || {schema} || '.' || tbl"
        return (
            f"SELECT {topic}, {self.key_expr('coalesce(after, before)')}, before, after,"
            f" op, ?, {source}, seq FROM {CHANGES} WHERE seq > ? ORDER BY seq LIMIT ?"
        )

    def read(self, max_records: int, timeout: float) -> Batch:
        if self._snapshot is not None:
            batch = self._snapshot.read(max(1, max_records))
            if self._snapshot.done:
                self._snapshot = None
            return batch
        deadline = time.monotonic() + timeout
        while True:
            version = self.conn.execute("PRAGMA schema_version").fetchone()[0]
            if version != self._schema_version:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    self._sync_triggers(force=False)
                finally:
                    self.conn.execute("COMMIT")
                self._select = self._query()
            rows = self.conn.execute(
                self._select, (now_ms(), self.position, max(1, max_records))
            ).fetchall()
            if rows:
                self.position = int(rows[-1][7])
                return Batch(_table(rows), {self.key: self.position})
            left = deadline - time.monotonic()
            if left <= 0:
                return Batch(empty())
            time.sleep(min(self.config.poll_interval, left))

    def committed(self, checkpoint: Checkpoint) -> None:
        seq = checkpoint.get(self.key)
        if seq is None:
            return
        self.conn.execute(
            f"UPDATE {CONSUMERS} SET seq = ? WHERE consumer = ?", (seq, self.consumer)
        )
        self.conn.execute(f"DELETE FROM {CHANGES} WHERE seq <= (SELECT min(seq) FROM {CONSUMERS})")

    def close(self) -> None:
        snapshot = getattr(self, "_snapshot", None)
        if snapshot is not None:
            snapshot.close()
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()


def _table(rows: list[tuple[Any, ...]]) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    return pa.table([pa.array(cols[i], f.type) for i, f in enumerate(SCHEMA)], schema=SCHEMA)


class _Snapshot:
    """Current rows as ``r`` events, read in the same transaction as the start position."""

    def __init__(self, src: SqliteCdc) -> None:
        self.src = src
        self.done = False
        self.conn = sqlite3.connect(
            src.path, timeout=60, isolation_level=None, check_same_thread=False
        )
        self.conn.execute("BEGIN")
        self.start = SqliteCdc._max_seq(self.conn)  # the read snapshot starts here
        self.tables = iter(src.tables)
        self.cursor: sqlite3.Cursor | None = None

    def _next_table(self) -> bool:
        table = next(self.tables, None)
        if table is None:
            return False
        cols = self.src.columns[table]
        image = (
            "json_object("
            + ", ".join(
                f"{lit(n)}, " + (f"hex({q(n)})" if "BLOB" in t else q(n)) for n, t, _ in cols
            )
            + ")"
        )
        pk = sorted((p, n) for n, _, p in cols if p)
        key = "json_object(" + ", ".join(f"{lit(n)}, {q(n)}" for _, n in pk) + ")" if pk else "NULL"
        cfg = self.src.config
        schema = self.src.schemas[table]
        source = (
            f"json_object('version', {lit(VERSION)}, 'connector', 'sqlite', 'name',"
            f" {lit(cfg.topic_prefix)}, 'ts_ms', ?, 'snapshot', 'true', 'db', {lit(self.src.db)},"
            f" 'schema', {lit(schema)}, 'table', {lit(table)}, 'txId', NULL, 'lsn', {self.start})"
        )
        ts = now_ms()
        self.cursor = self.conn.execute(
            f"SELECT {lit(f'{cfg.topic_prefix}.{schema}.{table}')}, {key}, NULL, {image}, 'r', ?,"
            f" {source}, 0 FROM {q(table)}",
            (ts, ts),
        )
        return True

    def read(self, max_records: int) -> Batch:
        rows: list[tuple[Any, ...]] = []
        while len(rows) < max_records:
            if self.cursor is None and not self._next_table():
                self.done = True
                break
            assert self.cursor is not None
            got = self.cursor.fetchmany(max_records - len(rows))
            if not got:
                self.cursor = None
                continue
            rows += got
        table = _table(rows) if rows else empty()
        if self.done:
            self.close()
            return Batch(table, {self.src.key: self.start})
        return Batch(table)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.OperationalError):
            self.conn.execute("COMMIT")
        self.conn.close()
