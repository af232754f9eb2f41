"""The native PostgreSQL engine's initial snapshot, resumable after a crash.

The snapshot reads each captured table in primary-key order inside the snapshot a
replication slot exported at its consistent point, and hands rows out as ``r`` events.
Every batch it returns carries the position ``{<slot>.snapshot: <chunk>}``; the key after
the last row of each chunk is kept in ``.tidelake/cdc/<slot>.snapshot.json`` (written
before the batch leaves), so a restart knows where the landed rows end.

An exported snapshot dies with the session that exported it, so a restart reads the rest
of the tables in a new one, exported by a temporary slot at a later consistent point. The
rows are thus read in **segments**, each at its own LSN: segment *i* covers the keys after
``after`` in table ``table`` (and every table after it) up to the next segment. A change
from the slot's stream whose transaction committed before the LSN of the segment that
covers its row is already in that segment's rows, and is dropped (``Segments.covers``).
So every row appears once as ``r`` and each later change once, however often the snapshot
is interrupted.

Tables resume mid-way only when their primary key is made of integer, text, uuid, date or
timestamp columns (ordered the same in PostgreSQL, with ``COLLATE "C"``, and in Python); a
table without one restarts from its first row when a crash interrupts it, so the rows read
from it before the crash are read again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from tidelake.runtime.base import Batch
from tidelake.sources.cdc import pgoutput
from tidelake.sources.cdc.envelope import VERSION, EnvelopeBuilder, empty, now_ms
from tidelake.sources.cdc.pg_session import connect, primary_key
from tidelake.sources.cdc.pgoutput import Relation

if TYPE_CHECKING:
    from tidelake.sources.cdc.postgres import PostgresCdc

log = logging.getLogger(__name__)

ORDERED_TYPES = {20, 21, 23, 25, 1043, 1082, 1114, 1184, 2950}
"""int8, int2, int4, text, varchar, date, timestamp, timestamptz, uuid: key types whose
converted values (``pgoutput.converter``) sort in Python as PostgreSQL sorts them."""
TEXT_TYPES = {25, 1043}

Key = list[Any]


@dataclass
class Segment:
    """Rows from ``after`` (exclusive; None = the first row) of table ``table`` onwards,
    read in the snapshot taken at ``lsn``."""

    table: int
    after: Key | None
    lsn: int


@dataclass
class Segments:
    """Where each row was read, to drop stream changes its snapshot row already holds."""

    items: list[Segment] = field(default_factory=list)

    @property
    def last_lsn(self) -> int:
        return max((s.lsn for s in self.items), default=0)

    def lsn_of(self, table: int, key: Key | None) -> int:
        """The LSN of the snapshot that read the row ``key`` of table ``table``."""
        lsn = self.items[0].lsn
        for s in self.items[1:]:
            if s.table < table or (
                s.table == table and (s.after is None or (key is not None and key > s.after))
            ):
                lsn = s.lsn
        return lsn

    def covers(self, table: int, key: Key | None, commit_lsn: int) -> bool:
        """True when a change committed at ``commit_lsn`` is already in the snapshot's row."""
        return commit_lsn < self.lsn_of(table, key)


@dataclass
class Reached:
    """Where a chunk ended: the next row is in table ``table`` after ``key`` (None: at its
    first row); ``text`` is that key as PostgreSQL prints it, to resume the scan from."""

    table: int
    key: Key | None = None
    text: list[str] | None = None


class Progress:
    """The sidecar file: the segments, and where each chunk handed out ended."""

    def __init__(self, path: Path, start: int) -> None:
        self.path = path
        self.start = start
        self.segments = Segments()
        self.chunks: dict[int, Reached] = {}

    @classmethod
    def load(cls, path: Path) -> Progress | None:
        """The progress kept in ``path`` (None if there is none)."""
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        p = cls(path, int(doc["start"]))
        p.segments.items = [Segment(t, a, lsn) for t, a, lsn in doc["segments"]]
        p.chunks = {int(k): Reached(*v) for k, v in doc["chunks"].items()}
        return p

    def save(self) -> None:
        doc = {
            "start": self.start,
            "segments": [[s.table, s.after, s.lsn] for s in self.segments.items],
            "chunks": {str(k): [r.table, r.key, r.text] for k, r in self.chunks.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def landed(self, chunk: int) -> None:
        """Forget the chunks before ``chunk``: a restart can no longer resume from them."""
        stale = [k for k in self.chunks if k < chunk]
        for k in stale:
            del self.chunks[k]
        if stale:
            self.save()


class Snapshot:
    """Current rows of the captured tables as ``r`` events, from where the latest segment
    begins, in the snapshot ``exported`` at that segment's LSN."""

    def __init__(
        self, src: PostgresCdc, progress: Progress, chunk: int, exported: str, at: Reached
    ) -> None:
        self.src = src
        self.progress = progress
        self.chunk = chunk
        self.done = False
        self.conn = connect(src.url)
        self.conn.autocommit = False
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self.conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(exported)))
        self.builder = EnvelopeBuilder()
        self.lsn = progress.segments.items[-1].lsn
        self.at = at
        self._cursor: psycopg.ServerCursor[Any] | None = None
        self._current: tuple[Relation, list[str], str, list[int]] | None = None

    def _open_table(self) -> bool:
        if self.at.table >= len(self.src.tables):
            return False
        schema, name = self.src.tables[self.at.table]
        relid, cols = self._columns(schema, name)
        rel = pgoutput.prepare(
            Relation(relid, schema, name, "d", cols), self.src.config.decimal_handling
        )
        keys = primary_key(self.conn, relid)
        index = {c.name: i for i, c in enumerate(cols)}
        ordered = bool(keys) and all(cols[index[k]].type_oid in ORDERED_TYPES for k in keys)
        select = sql.SQL("SELECT {} FROM {} AS t").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in cols),
            sql.Identifier(schema, name),
        )  # ORDER BY and WHERE name t.<column>: a bare name would sort by the text output
        params: list[str] = []
        if ordered:
            order = sql.SQL(", ").join(_sortable(cols[index[k]]) for k in keys)
            if self.at.text is not None:
                bound = sql.SQL(", ").join(
                    sql.SQL("CAST(%s AS {})").format(sql.SQL(_type_name(self.conn, relid, k)))
                    for k in keys
                )
                select += sql.SQL(" WHERE ({}) > ({})").format(order, bound)
                params = self.at.text
            select += sql.SQL(" ORDER BY {}").format(order)
        elif self.at.text is not None:
            log.warning(
                "cdc: the snapshot of %s.%s restarts from its first row (it has no primary key "
                "of integer, text, uuid or time columns to resume by): rows read before the "
                "interruption are read again",
                schema,
                name,
            )
        self._cursor = self.conn.cursor(name=f"tidelake_snapshot_{relid}")
        self._cursor.execute(select, params or None)
        topic = f"{self.src.config.topic_prefix}.{schema}.{name}"
        self._current = (rel, keys, topic, [index[k] for k in keys] if ordered else [])
        return True

    def _columns(self, schema: str, name: str) -> tuple[int, list[pgoutput.Column]]:
        rows = self.conn.execute(
            "SELECT c.oid::int, a.attname, a.atttypid::int, a.atttypmod FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " WHERE n.nspname = %s AND c.relname = %s ORDER BY a.attnum",
            (schema, name),
        ).fetchall()
        return rows[0][0], [pgoutput.Column(r[1], r[2], r[3], False) for r in rows]

    def read(self, max_records: int) -> Batch:
        """Up to ``max_records`` rows; the batch's position is its chunk number, and the
        snapshot's end also carries the slot's consistent point."""
        src, b = self.src, self.builder
        while len(b) < max_records:
            if self._cursor is None and not self._open_table():
                self.done = True
                break
            assert self._cursor is not None and self._current is not None
            rows = self._cursor.fetchmany(max_records - len(b))
            if not rows:
                self._cursor.close()
                self._cursor = None
                self.at = Reached(self.at.table + 1)
                continue
            rel, keys, topic, key_at = self._current
            ts = now_ms()
            source = {
                "version": VERSION,
                "connector": "postgresql",
                "name": src.config.topic_prefix,
                "ts_ms": ts,
                "snapshot": "true",
                "db": src.dbname,
                "schema": rel.schema,
                "table": rel.name,
                "txId": None,
                "lsn": self.lsn,
                "xmin": None,
            }
            after: dict[str, object] = {}
            for row in rows:
                after = pgoutput.image(rel, list(row))
                key = {k: after[k] for k in keys} if keys else None
                b.add(topic, key, None, after, "r", ts, source)
            if key_at:
                last = rows[-1]
                self.at = Reached(
                    self.at.table, [after[k] for k in keys], [last[i] for i in key_at]
                )
            else:  # no resumable key: a restart re-reads this table from its first row
                self.at = Reached(self.at.table, None, [])
        table = b.take() if len(b) else empty()
        self.chunk += 1
        self.progress.chunks[self.chunk] = self.at
        self.progress.save()
        positions = {src.snapshot_key: self.chunk}
        if self.done:
            self.close()
            positions[src.slot] = self.progress.start
        return Batch(table, positions)

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


def _sortable(col: pgoutput.Column) -> sql.Composable:
    ident = sql.Identifier("t", col.name)
    return sql.SQL('{} COLLATE "C"').format(ident) if col.type_oid in TEXT_TYPES else ident


def _type_name(conn: psycopg.Connection[Any], relid: int, column: str) -> str:
    row = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s AND attname = %s",
        (relid, column),
    ).fetchone()
    assert row is not None
    return str(row[0])
