"""Native PostgreSQL CDC: logical replication with ``pgoutput``, read over plain SQL.

psycopg 3 has no replication-protocol streaming, so changes are read with
``pg_logical_slot_peek_binary_changes`` (which never consumes) and the slot is moved with
``pg_replication_slot_advance`` only in :meth:`PostgresCdc.committed`, i.e. after the sink
stored the rows *and* the position. Guarantees:

- **Position** ``{<slot>: LSN}``: the end LSN of the last transaction handed out (or a WAL
  position up to which nothing concerned the publication). Transactions are never split
  across batches (a peek returns whole transactions), so the position is exact.
- **No loss, no duplicates**: a crash before ``committed`` leaves the slot behind; the next
  start re-reads from the slot and skips every transaction whose commit precedes the
  sink's position (``final_lsn < position``).
- **Initial snapshot**: when the slot is created it exports its snapshot and the current
  rows are read in that very snapshot (``REPEATABLE READ`` + ``SET TRANSACTION SNAPSHOT``),
  so every change after it appears exactly once. If the slot already existed without a
  position (crash during the snapshot), a fresh snapshot is taken: changes made between
  slot creation and that snapshot appear twice (``r`` then ``c``/``u``/``d``), which a
  current-state upsert absorbs.
- Re-reading cost: every poll re-decodes the changes not yet acknowledged (at most one
  batch window), the price of reading over SQL instead of the streaming protocol.

Transactions are emitted in commit order. ``TRUNCATE`` is skipped with a warning, like
Debezium's default ``skipped.operations=t``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from tidelake.errors import ConfigError, ConnectorError
from tidelake.runtime.base import Batch, Checkpoint, FlowContext, Source
from tidelake.sources.cdc import pgoutput
from tidelake.sources.cdc.envelope import VERSION, EnvelopeBuilder, default_name, empty, now_ms
from tidelake.sources.cdc.pg_session import connect, primary_key, retry_busy
from tidelake.sources.cdc.pg_snapshot import Progress, Reached, Segment, Snapshot
from tidelake.sources.cdc.pgoutput import Relation, int_to_lsn, lsn_to_int

if TYPE_CHECKING:
    from tidelake.sources.cdc import CdcConfig

log = logging.getLogger(__name__)

IDLE_ADVANCE_BYTES = 1 << 20
"""Move the position over WAL that holds nothing for us once this much has accumulated."""
LAG_CHECK_SECONDS = 10.0


class PostgresCdc(Source):
    """The ``native`` engine of the ``cdc`` source."""

    def __init__(self, config: CdcConfig) -> None:
        super().__init__(config)
        self.config: CdcConfig = config

    # ---- setup ---------------------------------------------------------------------------

    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        cfg = self.config
        self.ctx = ctx
        self.url = ctx.pipeline.url(cfg.database or ctx.pipeline.database)
        if not self.url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                f"flow {ctx.flow}: cdc engine 'native' needs a PostgreSQL database "
                "(set the source's 'database: postgresql://...', or use engine: sqlite)"
            )
        self.slot = cfg.slot or default_name(ctx.pipeline.name, ctx.flow)
        self.publication = cfg.publication or self.slot
        self.conn = connect(self.url)
        self.dbname = self.conn.info.dbname
        self.tables = self._resolve_tables()
        if cfg.replica_identity_full:
            for schema, name in self.tables:
                self.conn.execute(
                    sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(
                        sql.Identifier(schema, name)
                    )
                )
        self._ensure_publication()

        stored = checkpoint.get(self.slot)
        slot = self._slot_state()
        self.snapshot_key = f"{self.slot}.snapshot"
        progress_file = ctx.pipeline.state_dir / "cdc" / f"{self.slot}.snapshot.json"
        progress = Progress.load(progress_file) if slot is not None else None
        needs_snapshot = cfg.snapshot == "initial" and (slot is None or stored is None)
        if slot is None:
            if stored is not None:
                msg = (
                    f"cdc: slot {self.slot!r} is gone but the sink is at LSN "
                    f"{int_to_lsn(stored)}; changes made meanwhile were not captured"
                    + (" — re-reading the tables (snapshot: initial)" if needs_snapshot else "")
                )
                log.warning(msg)
                ctx.metrics.last_error = msg
            progress_file.unlink(missing_ok=True)
            start, exported, repl = self._create_slot(self.slot, export=needs_snapshot)
            at_lsn = start
        else:
            start = slot
            if stored is not None and stored > slot:
                self._advance(stored)  # the sink committed but the slot was not moved
            elif stored is not None and stored < slot:
                log.warning(
                    "cdc: slot %s is at %s, past the sink's %s (was it shared with another flow?)",
                    self.slot,
                    int_to_lsn(slot),
                    int_to_lsn(stored),
                )
            if needs_snapshot:  # interrupted: the rest in a snapshot of a temporary slot
                resume = f"{self.slot[:48]}_r{uuid.uuid4().hex[:8]}"
                at_lsn, exported, repl = self._create_slot(resume, export=True, temporary=True)
        self._position = stored if stored is not None else start
        self._reported = stored
        self._acked = max(stored or 0, slot if slot is not None else start)
        self._relations: dict[int, Relation] = {}
        self._keys: dict[int, list[str]] = {}
        self._unacked: deque[tuple[int, int]] = deque()
        self._builder = EnvelopeBuilder()
        self._last_lag_check = 0.0
        self._table_index = {t: i for i, t in enumerate(self.tables)}
        self._snapshot_reader: Snapshot | None = None
        if needs_snapshot:
            assert exported is not None and repl is not None
            self._snapshot_reader = self._resume(
                progress, progress_file, start, at_lsn, exported, checkpoint
            )
            repl.close()  # the snapshot is imported: the exporting session may end
        self._progress = progress
        if self._snapshot_reader is not None:
            self._progress = self._snapshot_reader.progress
        if self._progress is not None and self._position >= self._progress.segments.last_lsn:
            self._progress.remove()
            self._progress = None

    def _resume(
        self,
        progress: Progress | None,
        path: Path,
        start: int,
        at_lsn: int,
        exported: str,
        checkpoint: Checkpoint,
    ) -> Snapshot:
        """The snapshot reader, from where the landed rows end, in the snapshot ``exported``
        at ``at_lsn`` (see ``pg_snapshot``)."""
        chunk = checkpoint.get(self.snapshot_key)
        at = progress.chunks.get(chunk) if progress is not None and chunk is not None else None
        if progress is None:
            progress = Progress(path, start)
        if chunk is not None and at is None:
            log.warning(
                "cdc: %s is missing or does not hold chunk %d of the interrupted snapshot: "
                "reading every table again (rows already landed are read twice)",
                path,
                chunk,
            )
        at = at or Reached(0)
        progress.segments.items.append(Segment(at.table, at.key, at_lsn))
        progress.chunks = {chunk: at} if chunk is not None else {}
        progress.save()
        return Snapshot(self, progress, chunk or 0, exported, at)

    def _resolve_tables(self) -> list[tuple[str, str]]:
        out = []
        for schema, name in self.config.qualified_tables("public"):
            row = self.conn.execute(
                "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                (schema, name),
            ).fetchone()
            if row is None:
                raise ConfigError(
                    f"flow {self.ctx.flow}: cdc table {schema}.{name} does not exist in database "
                    f"{self.dbname!r} (create it first, or fix 'tables')"
                )
            out.append((schema, name))
        return out

    def _ensure_publication(self) -> None:
        wanted = set(self.tables)
        targets = sql.SQL(", ").join(sql.Identifier(s, n) for s, n in self.tables)
        pub = sql.Identifier(self.publication)
        exists = self.conn.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)
        ).fetchone()
        if exists is None:
            self.conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(pub, targets))
            return
        have = self.conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
            (self.publication,),
        ).fetchall()
        if {(s, n) for s, n in have} != wanted:
            self.conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(pub, targets))

    def _slot_state(self) -> int | None:
        row = self.conn.execute(
            "SELECT plugin, database, confirmed_flush_lsn::text FROM pg_replication_slots"
            " WHERE slot_name = %s",
            (self.slot,),
        ).fetchone()
        if row is None:
            return None
        plugin, database, confirmed = row
        if plugin != "pgoutput" or database != self.dbname:
            raise ConfigError(
                f"flow {self.ctx.flow}: replication slot {self.slot!r} belongs to plugin "
                f"{plugin!r} on database {database!r}; give this flow another 'slot'"
            )
        return lsn_to_int(confirmed)

    def _create_slot(
        self, name: str, export: bool, temporary: bool = False
    ) -> tuple[int, str | None, psycopg.Connection[Any] | None]:
        """Create slot ``name``; with ``export`` also return the exported snapshot and the
        replication session that keeps it alive until the snapshot is imported (a
        ``temporary`` slot ends with that session)."""
        if not export:
            (lsn,) = self.conn.execute(
                "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                (name,),
            ).fetchone()  # type: ignore[misc]
            return lsn_to_int(lsn), None, None
        repl = psycopg.connect(self.url, autocommit=True, replication="database")
        kind = "TEMPORARY LOGICAL" if temporary else "LOGICAL"
        command = f"CREATE_REPLICATION_SLOT {sql.Identifier(name).as_string(repl)} {kind}"
        res = repl.pgconn.exec_(f"{command} pgoutput (SNAPSHOT 'export')".encode())
        if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
            message = (res.error_message or b"").decode(errors="replace").strip()
            repl.close()
            raise ConnectorError(
                f"cdc: cannot create replication slot {name!r}: {message} (the server "
                "needs wal_level=logical and a free slot: max_replication_slots)"
            )
        consistent, snapshot = res.get_value(0, 1), res.get_value(0, 2)
        assert consistent is not None and snapshot is not None
        return lsn_to_int(consistent.decode()), snapshot.decode(), repl

    # ---- reading -------------------------------------------------------------------------

    def read(self, max_records: int, timeout: float) -> Batch:
        max_records = max(1, max_records)
        if self._snapshot_reader is not None:
            batch = self._snapshot_reader.read(max_records)
            if self._snapshot_reader.done:
                self._snapshot_reader = None
            return batch
        deadline = time.monotonic() + timeout
        while True:
            self._check_lag()
            batch = self._poll(max_records)
            if batch.table.num_rows or batch.positions:
                return batch
            left = deadline - time.monotonic()
            if left <= 0:
                return batch
            time.sleep(min(self.config.poll_interval, left))

    def _peek(self, upto: int, n: int) -> list[tuple[bytes]]:
        def run() -> list[tuple[bytes]]:
            return self.conn.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s,"
                " 'proto_version', '1', 'publication_names', %s)",
                (self.slot, int_to_lsn(upto), n, self.publication),
            ).fetchall()

        return retry_busy(run, f"reading slot {self.slot!r}")

    def _poll(self, max_records: int) -> Batch:
        (flushed,) = self.conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()  # type: ignore[misc]
        upto = lsn_to_int(flushed)
        limit = sum(n for _, n in self._unacked) + max_records
        messages = self._peek(upto, limit)
        b = self._builder
        skipping, count, emitted = True, 0, False
        begin: pgoutput.Begin | None = None
        seen: deque[tuple[int, int]] = deque()
        for (data,) in messages:
            count += 1
            kind = data[0]
            if kind == 0x42:  # Begin
                msg = pgoutput.decode(data)
                assert isinstance(msg, pgoutput.Begin)
                begin = msg
                skipping = begin.final_lsn < self._position
                count = 1
            elif kind == 0x43:  # Commit
                commit = pgoutput.decode(data)
                assert isinstance(commit, pgoutput.Commit)
                seen.append((commit.end_lsn, count))
                if not skipping:
                    self._position = max(self._position, commit.end_lsn)
                    emitted = True
                skipping = True
            elif kind == 0x52:  # Relation: needed even inside skipped transactions
                self._relation(pgoutput.decode(data))  # type: ignore[arg-type]
            elif not skipping and begin is not None:
                self._change(pgoutput.decode(data), begin)
        self._unacked = deque((end, n) for end, n in seen if end > self._acked)
        if len(messages) < limit and upto - self._position >= IDLE_ADVANCE_BYTES:
            self._position = upto  # all WAL up to here was decoded; nothing else was ours
        table = b.take() if len(b) else empty()
        positions: Checkpoint = {}
        if emitted or self._position - (self._reported or 0) >= IDLE_ADVANCE_BYTES:
            positions = {self.slot: self._position}
            self._reported = self._position
        return Batch(table, positions)

    def _relation(self, rel: Relation) -> None:
        pgoutput.prepare(rel, self.config.decimal_handling)
        old = self._relations.get(rel.relid)
        if old is None or old.columns != rel.columns:
            self._keys[rel.relid] = primary_key(self.conn, rel.relid)
        self._relations[rel.relid] = rel

    def _change(self, msg: pgoutput.Message, begin: pgoutput.Begin) -> None:
        if isinstance(msg, pgoutput.Truncate):
            log.warning("cdc: TRUNCATE of relation(s) %s skipped (as Debezium does)", msg.relids)
            return
        if not isinstance(msg, pgoutput.Insert | pgoutput.Update | pgoutput.Delete):
            return
        rel = self._relations.get(msg.relid)
        if rel is None:
            raise ConnectorError(f"cdc: change of relation {msg.relid} before its Relation message")
        keycols = self._keys.get(msg.relid, [])
        ts = now_ms()
        source = {
            "version": VERSION,
            "connector": "postgresql",
            "name": self.config.topic_prefix,
            "ts_ms": begin.commit_ts_us // 1000,
            "snapshot": "false",
            "db": self.dbname,
            "schema": rel.schema,
            "table": rel.name,
            "txId": begin.xid,
            "lsn": begin.final_lsn,
            "xmin": None,
        }
        topic = f"{self.config.topic_prefix}.{rel.schema}.{rel.name}"
        progress = self._progress
        covered = progress is not None and begin.final_lsn < progress.segments.last_lsn
        table = self._table_index.get((rel.schema, rel.name), 0)

        def add(key: dict[str, object] | None, *event: Any) -> None:
            if covered and progress is not None:  # already in the row an interrupted snapshot read
                values = None if key is None else list(key.values())
                if progress.segments.covers(table, values, begin.final_lsn):
                    return
            self._builder.add(topic, key, *event)

        def key_of(row: dict[str, object]) -> dict[str, object] | None:
            return {k: row.get(k) for k in keycols} if keycols else None

        if isinstance(msg, pgoutput.Insert):
            after = pgoutput.image(rel, msg.new)
            add(key_of(after), None, after, "c", ts, source)
        elif isinstance(msg, pgoutput.Update):
            after = pgoutput.image(rel, msg.new)
            before = pgoutput.image(rel, msg.old, msg.old_is_key) if msg.old is not None else None
            if before is not None and keycols and key_of(before) != key_of(after):
                # a key change is a delete of the old key and a create of the new (as Debezium)
                add(key_of(before), before, None, "d", ts, source)
                add(key_of(after), None, after, "c", ts, source)
            else:
                add(key_of(after), before, after, "u", ts, source)
        else:
            before = pgoutput.image(rel, msg.old, msg.old_is_key)
            add(key_of(before), before, None, "d", ts, source)

    def _check_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_check < LAG_CHECK_SECONDS:
            return
        self._last_lag_check = now
        row = self.conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
            " FROM pg_replication_slots WHERE slot_name = %s",
            (self.slot,),
        ).fetchone()
        retained = int(row[0] or 0) if row else 0
        limit = self.config.slot_lag_warning_mb * (1 << 20)
        if retained > limit:
            msg = (
                f"cdc: replication slot {self.slot!r} retains {retained / (1 << 20):,.0f} MB of "
                f"WAL (> slot_lag_warning_mb={self.config.slot_lag_warning_mb:g}); the flow is "
                "behind or stopped. If it is gone for good: tidelake cdc drop-slot"
            )
            log.warning(msg)
            self.ctx.metrics.last_error = msg

    # ---- acknowledgement -----------------------------------------------------------------

    def committed(self, checkpoint: Checkpoint) -> None:
        lsn = checkpoint.get(self.slot)
        if (progress := self._progress) is not None:
            if (chunk := checkpoint.get(self.snapshot_key)) is not None:
                progress.landed(chunk)
            streaming = self._snapshot_reader is None and lsn is not None
            if streaming and lsn >= progress.segments.last_lsn:  # type: ignore[operator]
                progress.remove()  # no change is left that a snapshot row already holds
                self._progress = None
        if lsn is None or lsn <= self._acked:
            return
        self._advance(lsn)
        self._acked = lsn
        while self._unacked and self._unacked[0][0] <= lsn:
            self._unacked.popleft()

    def _advance(self, lsn: int) -> None:
        def run() -> None:
            self.conn.execute(
                "SELECT pg_replication_slot_advance(slot_name, %s::pg_lsn)"
                " FROM pg_replication_slots WHERE slot_name = %s"
                " AND confirmed_flush_lsn < %s::pg_lsn",
                (int_to_lsn(lsn), self.slot, int_to_lsn(lsn)),
            )

        retry_busy(run, f"advancing slot {self.slot!r}")

    def close(self) -> None:
        snapshot = getattr(self, "_snapshot_reader", None)
        if snapshot is not None:
            snapshot.close()
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()


def drop_slot(database_url: str, slot: str, publication: str | None = None) -> bool:
    """Drop ``slot`` (and ``publication`` when given); True when the slot existed."""
    conn = connect(database_url)
    try:
        existed = conn.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        if existed:
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except psycopg.errors.ObjectInUse as e:
                raise ConnectorError(
                    f"cdc: slot {slot!r} is in use ({e}); stop the flow reading it first"
                ) from e
        if publication is not None:
            drop = sql.SQL("DROP PUBLICATION IF EXISTS {}")
            conn.execute(drop.format(sql.Identifier(publication)))
        return existed is not None
    finally:
        conn.close()
