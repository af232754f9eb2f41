"""The embedded log: a durable, multi-process-safe log in one SQLite (WAL) file.

Several processes on one machine may produce and consume at once: offsets are
allocated inside ``BEGIN IMMEDIATE`` transactions (dense, never reused), group
membership lives in the file (members heartbeat; a member whose process died
is evicted at once, a silent one after ``session_timeout``), and partitions
are split between a group's live members round-robin.

A partition has at most one owner at a time (the ``owners`` table): a member
only takes a partition once its previous owner released it -- after that
owner's ``on_revoke`` ran (and committed) -- or was evicted. Membership and
rebalance callbacks happen inside ``poll`` (and ``close``), as with Kafka.

Transactions: a :class:`EmbeddedTransactionalProducer` buffers what is produced between
``begin`` and ``commit`` and writes it in ONE ``BEGIN IMMEDIATE`` transaction, so
consumers see all of it or none of it, and offsets stay dense (aborted records never
reach the file). Each transactional id has an epoch in the ``producers`` table; opening
a producer bumps it, and ``commit`` checks it inside the write transaction, so a fenced
(zombie) producer can never commit. Group offsets sent with a transaction
(``send_offsets``) are written in the same transaction, after checking in the ``owners``
table that the consumer still owns their partitions: a member evicted for silence (paused
past ``session_timeout``) whose partitions went to another cannot commit (Kafka's KIP-447).

Contention: every write is one ``BEGIN IMMEDIATE`` transaction run by :func:`_transaction`,
which rolls back and retries with backoff while other writers hold the lock (beyond
SQLite's own busy wait), for up to ``LOCK_RETRY_SECONDS``: a busy log slows its producers
and consumers down instead of failing them.

Compacted topics: appending a keyed record deletes the older records with the same key
in the same transaction (Kafka compacts later, in the background; readers only see
fewer duplicates here). Retention never deletes from a compacted topic.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from pathlib import Path
from typing import TypeVar

from tidelake.broker.base import (
    Broker,
    Consumer,
    MessageBatch,
    Producer,
    RebalanceCallback,
    TopicPartition,
    TransactionalProducer,
    partition_for,
)
from tidelake.errors import ConfigError, ConnectorError, Fenced
from tidelake.sqlite_wal import open_wal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
  name TEXT PRIMARY KEY, partitions INTEGER NOT NULL, retention_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
  topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
  ts INTEGER NOT NULL, key BLOB, value BLOB,
  PRIMARY KEY (topic, partition, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
  grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
  PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
  grp TEXT NOT NULL, member TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
  heartbeat REAL NOT NULL, PRIMARY KEY (grp, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (
  grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, member TEXT NOT NULL,
  PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS producers (
  transactional_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL) WITHOUT ROWID;
"""

DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000
LOCK_RETRY_SECONDS = 600.0
"""How long a write keeps retrying while other writers hold the log's lock."""

log = logging.getLogger(__name__)
T = TypeVar("T")


def _open(path: str) -> sqlite3.Connection:
    conn = open_wal(path)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _transaction(conn: sqlite3.Connection, work: Callable[[], T], what: str) -> T:
    """Run ``work`` (statements on ``conn``) in one ``BEGIN IMMEDIATE`` transaction and commit.

    Lock contention ("database is locked") rolls the transaction back and runs ``work``
    again after a backoff (jittered, doubling to 1 s), for up to ``LOCK_RETRY_SECONDS``;
    so ``work`` must only touch the database, or state it rebuilds each time. Any other
    error rolls back and is raised.
    """
    started = time.monotonic()
    delay, warned = 0.01, False
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work()
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            waited = time.monotonic() - started
            if waited > LOCK_RETRY_SECONDS:
                raise ConnectorError(
                    f"embedded log: {what}: still locked by other writers after {waited:.0f}s "
                    "(a process holds a write transaction on the log file that long: find it "
                    "with `fuser` on the file, let it finish or stop it, then restart)"
                ) from e
            if not warned and waited > 5:
                log.warning("embedded log busy: %s waits for other writers (%.0fs)", what, waited)
                warned = True
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 1.0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedBroker(Broker):
    """A log in one SQLite file; safe across threads and processes of one machine."""

    def __init__(self, path: str, retention_ms: int = DEFAULT_RETENTION_MS) -> None:
        self.path = str(path)
        self.url = f"embedded:///{Path(path).resolve()}"
        self.retention_ms = retention_ms
        conn = _open(self.path)
        try:
            _transaction(conn, lambda: _create_schema(conn), "create the log's tables")
        finally:
            conn.close()

    def connection(self) -> sqlite3.Connection:
        return _open(self.path)

    def create_topic(
        self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> None:
        """``config``: ``cleanup.policy`` (delete|compact) and ``retention.ms``; other Kafka
        topic settings have no meaning here and are ignored."""
        config = dict(config or {})
        policy = config.get("cleanup.policy", "delete")
        if policy not in ("delete", "compact"):
            raise ConfigError(
                f"topic {name!r}: cleanup.policy {policy!r} is not supported by the embedded "
                "log (use 'delete' or 'compact')"
            )
        try:
            retention_ms = int(config.get("retention.ms", self.retention_ms))
        except ValueError as e:
            raise ConfigError(f"topic {name!r}: retention.ms must be an integer") from e
        conn = self.connection()
        try:
            _transaction(
                conn,
                lambda: conn.execute(
                    "INSERT OR IGNORE INTO topics (name, partitions, retention_ms, compact)"
                    " VALUES (?, ?, ?, ?)",
                    (name, partitions, retention_ms, int(policy == "compact")),
                ),
                f"create topic {name!r}",
            )
        finally:
            conn.close()

    def topics(self) -> dict[str, int]:
        conn = self.connection()
        try:
            return dict(conn.execute("SELECT name, partitions FROM topics ORDER BY name"))
        finally:
            conn.close()

    def end_offsets(self, topic: str) -> dict[int, int]:
        conn = self.connection()
        try:
            return _end_offsets(conn, topic)
        finally:
            conn.close()

    def producer(self) -> EmbeddedProducer:
        return EmbeddedProducer(self)

    def transactional_producer(self, transactional_id: str) -> EmbeddedTransactionalProducer:
        return EmbeddedTransactionalProducer(self, transactional_id)

    def latest(
        self, topic: str, keys: Sequence[bytes], timeout: float = 120.0
    ) -> dict[bytes, bytes]:
        conn = self.connection()
        try:
            row = conn.execute("SELECT partitions FROM topics WHERE name = ?", (topic,)).fetchone()
            if row is None:
                return {}
            found = {}
            for key in keys:
                value = conn.execute(
                    "SELECT value FROM messages WHERE topic = ? AND partition = ? AND key = ?"
                    " ORDER BY offset DESC LIMIT 1",
                    (topic, partition_for(key, row[0], 0), key),
                ).fetchone()
                if value is not None:
                    found[key] = value[0]
            return found
        finally:
            conn.close()

    def consumer(
        self,
        group: str,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> EmbeddedConsumer:
        return EmbeddedConsumer(self, group, topics, on_assign, on_revoke)


def _create_schema(conn: sqlite3.Connection) -> None:
    """The tables, and what logs written by older versions lack (inside a transaction)."""
    for statement in filter(str.strip, _SCHEMA.split(";")):
        conn.execute(statement)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(topics)")}
    if "compact" not in columns:
        conn.execute("ALTER TABLE topics ADD COLUMN compact INTEGER NOT NULL DEFAULT 0")


Records = list[tuple[bytes | None, bytes | None]]


def _topic_info(conn: sqlite3.Connection, broker: EmbeddedBroker, topic: str) -> tuple[int, bool]:
    """(partitions, compacted) of ``topic``, created with the defaults when missing."""
    row = conn.execute("SELECT partitions, compact FROM topics WHERE name = ?", (topic,)).fetchone()
    if row is None:
        broker.create_topic(topic)
        row = conn.execute(
            "SELECT partitions, compact FROM topics WHERE name = ?", (topic,)
        ).fetchone()
    return int(row[0]), bool(row[1])


def _append(
    conn: sqlite3.Connection, topic: str, partition: int, records: Records, ts: int, compact: bool
) -> None:
    """Insert ``records`` at the end of the partition; inside the caller's write transaction."""
    start = conn.execute(
        "SELECT coalesce(max(offset) + 1, 0) FROM messages WHERE topic = ? AND partition = ?",
        (topic, partition),
    ).fetchone()[0]
    keys, values = zip(*records, strict=True)
    n = len(records)
    conn.executemany(
        "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)",
        zip(
            repeat(topic, n),
            repeat(partition, n),
            range(start, start + n),
            repeat(ts, n),
            keys,
            values,
            strict=True,
        ),
    )
    if compact:
        last: dict[bytes, int] = {}
        for i, (k, _) in enumerate(records):
            if k is None:
                raise ConnectorError(f"compacted topic {topic!r} only takes keyed records")
            last[k] = start + i
        conn.executemany(
            "DELETE FROM messages WHERE topic = ? AND partition = ? AND key = ? AND offset < ?",
            [(topic, partition, k, o) for k, o in last.items()],
        )


def _store_offsets(
    conn: sqlite3.Connection, group: str, offsets: dict[TopicPartition, int]
) -> None:
    """Store ``group``'s offsets (inside the caller's transaction)."""
    conn.executemany(
        "INSERT OR REPLACE INTO group_offsets VALUES (?, ?, ?, ?)",
        [(group, t, p, o) for (t, p), o in offsets.items()],
    )


def _end_offsets(conn: sqlite3.Connection, topic: str) -> dict[int, int]:
    row = conn.execute("SELECT partitions FROM topics WHERE name = ?", (topic,)).fetchone()
    if row is None:
        return {}
    return {
        p: conn.execute(
            "SELECT coalesce(max(offset) + 1, 0) FROM messages WHERE topic = ? AND partition = ?",
            (topic, p),
        ).fetchone()[0]
        for p in range(row[0])
    }


class EmbeddedProducer(Producer):
    """Each ``produce`` (and ``produce_batches``) call is one transaction: durable when it
    returns."""

    _RETENTION_EVERY = 60.0
    atomic_batches = True

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.broker = broker
        self.conn = broker.connection()
        self._counter = 0
        self._partitions: dict[str, tuple[int, bool]] = {}
        self._last_retention = 0.0

    def _topic(self, topic: str) -> tuple[int, bool]:
        if topic not in self._partitions:
            self._partitions[topic] = _topic_info(self.conn, self.broker, topic)
        return self._partitions[topic]

    def produce(
        self, topic: str, values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None
    ) -> None:
        if values:
            self._write(self._partitioned(topic, values, keys, {}))

    def produce_batches(self, batches: Sequence[tuple[str, Sequence[bytes]]]) -> None:
        into: dict[tuple[str, int], Records] = {}
        for topic, values in batches:
            self._partitioned(topic, values, None, into)
        if into:
            self._write(into)

    def _partitioned(
        self,
        topic: str,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None] | None,
        into: dict[tuple[str, int], Records],
    ) -> dict[tuple[str, int], Records]:
        """Add records to ``into`` under (topic, partition): keyed hash or round-robin."""
        n, _ = self._topic(topic)
        if n == 1 and keys is None:  # the common case, without a Python step per record
            into.setdefault((topic, 0), []).extend(zip(repeat(None), values))
            self._counter += len(values)
            return into
        keys = keys if keys is not None else [None] * len(values)
        for k, v in zip(keys, values, strict=True):
            p = partition_for(k, n, self._counter) if n > 1 else 0
            self._counter += 1
            records = into.get((topic, p))
            if records is None:
                records = into[(topic, p)] = []
            records.append((k, v))
        return into

    def _write(
        self, records: dict[tuple[str, int], Records], check: Callable[[], None] = lambda: None
    ) -> None:
        """Append ``records`` in one SQLite transaction, after ``check`` (which may refuse)."""
        ts = int(time.time() * 1000)

        def append() -> None:
            check()
            for (topic, p), rows in records.items():
                _append(self.conn, topic, p, rows, ts, self._topic(topic)[1])

        _transaction(self.conn, append, "produce")
        if time.monotonic() - self._last_retention > self._RETENTION_EVERY:
            try:  # the records are durable: a failure here must not make the caller resend
                self._enforce_retention()
            except (sqlite3.Error, ConnectorError):
                log.exception("embedded log: enforcing retention failed (retried in a minute)")

    def _enforce_retention(self) -> None:
        """Drop records older than their topic's retention (offsets of the rest are unchanged)."""
        self._last_retention = time.monotonic()
        now = int(time.time() * 1000)
        _transaction(
            self.conn,
            lambda: self.conn.execute(
                "DELETE FROM messages"
                " WHERE ts < ? - (SELECT retention_ms FROM topics WHERE name = topic)"
                " AND topic NOT IN (SELECT name FROM topics WHERE compact)"
                " AND offset < (SELECT max(m.offset) FROM messages m"
                " WHERE m.topic = messages.topic AND m.partition = messages.partition)",
                (now,),
            ),
            "enforce retention",
        )

    def flush(self, timeout: float = 30.0) -> None:
        """Nothing to do: ``produce`` commits before returning."""

    def close(self) -> None:
        self.conn.close()


class EmbeddedTransactionalProducer(EmbeddedProducer, TransactionalProducer):
    """Buffers a transaction in memory; ``commit`` writes it in one SQLite transaction."""

    def __init__(self, broker: EmbeddedBroker, transactional_id: str) -> None:
        super().__init__(broker)
        self.transactional_id = transactional_id
        self._buffer: dict[tuple[str, int], Records] | None = None
        self._offsets: tuple[str, str, dict[TopicPartition, int]] | None = None
        conn = self.conn

        def bump() -> int:
            conn.execute(
                "INSERT INTO producers VALUES (?, 1) ON CONFLICT (transactional_id)"
                " DO UPDATE SET epoch = epoch + 1",
                (transactional_id,),
            )
            epoch: int = conn.execute(
                "SELECT epoch FROM producers WHERE transactional_id = ?", (transactional_id,)
            ).fetchone()[0]
            return epoch

        self.epoch = _transaction(conn, bump, f"open producer {transactional_id!r}")

    def begin(self) -> None:
        if self._buffer is not None:
            raise ConnectorError(f"producer {self.transactional_id!r}: a transaction is open")
        self._buffer, self._offsets = {}, None

    def produce(
        self, topic: str, values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None
    ) -> None:
        if self._buffer is None:
            raise ConnectorError(f"producer {self.transactional_id!r}: produce outside begin()")
        if values:
            self._partitioned(topic, values, keys, self._buffer)

    def send_offsets(self, offsets: dict[TopicPartition, int], consumer: Consumer) -> None:
        if self._buffer is None:
            raise ConnectorError(f"producer {self.transactional_id!r}: offsets outside begin()")
        if not isinstance(consumer, EmbeddedConsumer) or consumer.broker.path != self.broker.path:
            raise ConnectorError("send_offsets: the consumer must read the same embedded log")
        self._offsets = (consumer.group, consumer.member, dict(offsets))

    def commit(self) -> None:
        if self._buffer is None:
            raise ConnectorError(f"producer {self.transactional_id!r}: commit outside begin()")
        buffer, self._buffer = self._buffer, None
        offsets, self._offsets = self._offsets, None

        def check() -> None:
            self._not_fenced()
            if offsets is not None:
                self._commit_offsets(*offsets)

        self._write(buffer, check=check)

    def _commit_offsets(self, group: str, member: str, offsets: dict[TopicPartition, int]) -> None:
        """Inside the write transaction: refuse unless ``member`` owns every partition."""
        owners = dict(
            ((t, p), m)
            for t, p, m in self.conn.execute(
                "SELECT topic, partition, member FROM owners WHERE grp = ?", (group,)
            )
        )
        lost = sorted(f"{t}/{p}" for t, p in offsets if owners.get((t, p)) != member)
        if lost:
            raise Fenced(
                f"group {group!r} gave partition(s) {', '.join(lost[:3])} to another member "
                "while this one was not heard from (paused or cut off past its session "
                "timeout); nothing of the transaction was committed"
            )
        _store_offsets(self.conn, group, offsets)

    def _not_fenced(self) -> None:
        row = self.conn.execute(
            "SELECT epoch FROM producers WHERE transactional_id = ?", (self.transactional_id,)
        ).fetchone()
        if row is None or row[0] != self.epoch:
            raise ConnectorError(
                f"producer {self.transactional_id!r} was fenced: a newer producer with the "
                "same transactional id took over (is this flow running twice?); "
                "its transaction was not committed"
            )

    def abort(self) -> None:
        self._buffer, self._offsets = None, None

    def flush(self, timeout: float = 30.0) -> None:
        """Nothing to do: ``commit`` is the durability point."""

    def close(self) -> None:
        self._buffer = None
        self.conn.close()


class EmbeddedConsumer(Consumer):
    """A group member. Membership is refreshed at most every ``heartbeat`` seconds in ``poll``."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        group: str,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        heartbeat: float = 0.5,
        session_timeout: float = 6.0,
    ) -> None:
        self.broker = broker
        self.group = group
        self.topics = list(topics)
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.heartbeat = heartbeat
        self.session_timeout = session_timeout
        self.member = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.conn = broker.connection()
        for t in self.topics:
            broker.create_topic(t)
        self._positions: dict[TopicPartition, int] = {}
        self._last_beat = 0.0
        self._closed = False
        self._pending = False  # partitions assigned to us that their old owner still holds
        self._rr = 0

    def _rebalance(self) -> None:
        """Heartbeat, evict dead members, then release/acquire partitions to match the split."""
        host = socket.gethostname()
        conn = self.conn

        def beat() -> tuple[list[str], list[TopicPartition], set[TopicPartition]]:
            now = time.time()
            conn.execute(
                "INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?)",
                (self.group, self.member, host, os.getpid(), now),
            )
            members = conn.execute(
                "SELECT member, host, pid, heartbeat FROM members WHERE grp = ?", (self.group,)
            ).fetchall()
            dead = [
                (self.group, m)
                for m, h, pid, beat in members
                if now - beat > self.session_timeout or (h == host and not _pid_alive(pid))
            ]
            conn.executemany("DELETE FROM members WHERE grp = ? AND member = ?", dead)
            conn.executemany("DELETE FROM owners WHERE grp = ? AND member = ?", dead)
            live = sorted(m for m, *_ in members if (self.group, m) not in dead)
            parts = [
                (t, p)
                for t, n in conn.execute(
                    "SELECT name, partitions FROM topics WHERE name IN "
                    f"({','.join('?' * len(self.topics))})",
                    self.topics,
                )
                for p in range(n)
            ]
            held = {
                (t, p)
                for t, p in conn.execute(
                    "SELECT topic, partition FROM owners WHERE grp = ? AND member = ?",
                    (self.group, self.member),
                )
            }
            return live, parts, held

        live, parts, held = _transaction(conn, beat, f"heartbeat of group {self.group!r}")
        self._last_beat = time.monotonic()
        me = live.index(self.member)
        mine = {tp for i, tp in enumerate(sorted(parts)) if i % len(live) == me}
        # lost: we were evicted (silent too long) and our partitions were freed meanwhile.
        # Another member may read them already: nothing of them may be flushed (no on_revoke,
        # Kafka's onPartitionsLost), the caller drops what it holds and starts again from its
        # sink's checkpoint.
        lost = sorted(tp for tp in self._positions if tp not in held)
        if lost:
            for tp in lost:
                del self._positions[tp]
            raise Fenced(
                f"group {self.group!r}: partition(s) "
                f"{', '.join(f'{t}/{p}' for t, p in lost[:3])} went to another member while "
                f"this one was not heard from for {self.session_timeout:.0f}s (paused or "
                "starved); what it held of them is dropped, it rejoins from the checkpoint"
            )
        revoked = sorted(tp for tp in self._positions if tp not in mine)
        if revoked:
            try:
                if self.on_revoke:
                    self.on_revoke(revoked)
            finally:
                for tp in revoked:
                    del self._positions[tp]
                _transaction(
                    conn,
                    lambda: conn.executemany(
                        "DELETE FROM owners WHERE grp = ? AND topic = ? AND partition = ?"
                        " AND member = ?",
                        [(self.group, t, p, self.member) for t, p in revoked],
                    ),
                    f"release partitions of group {self.group!r}",
                )
        wanted = sorted(tp for tp in mine if tp not in self._positions)

        def take() -> dict[TopicPartition, int]:
            """The wanted partitions no other member holds, now ours, at their offsets."""
            taken: dict[TopicPartition, int] = {}
            for tp in wanted:
                owner = conn.execute(
                    "SELECT o.member FROM owners o JOIN members m"
                    " ON m.grp = o.grp AND m.member = o.member"
                    " WHERE o.grp = ? AND o.topic = ? AND o.partition = ?",
                    (self.group, *tp),
                ).fetchone()
                if owner is not None and owner[0] != self.member:
                    continue  # its owner has not run on_revoke yet: take it later
                conn.execute(
                    "INSERT OR REPLACE INTO owners VALUES (?, ?, ?, ?)",
                    (self.group, *tp, self.member),
                )
                row = conn.execute(
                    "SELECT offset FROM group_offsets"
                    " WHERE grp = ? AND topic = ? AND partition = ?",
                    (self.group, *tp),
                ).fetchone()
                taken[tp] = row[0] if row else 0
            return taken

        taken = (
            _transaction(conn, take, f"take partitions of group {self.group!r}") if wanted else {}
        )
        self._positions.update(taken)
        added = sorted(taken)
        self._pending = len(added) < len(wanted)
        if added and self.on_assign:
            self.on_assign(added)

    def poll(self, max_records: int, timeout: float) -> MessageBatch:
        deadline = time.monotonic() + timeout
        while True:
            every = 0.05 if self._pending else self.heartbeat
            if time.monotonic() - self._last_beat >= every:
                self._rebalance()
            batch = self._fetch(max_records)
            if len(batch) or time.monotonic() >= deadline:
                return batch
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def _fetch(self, max_records: int) -> MessageBatch:
        batch = MessageBatch()
        tps = sorted(self._positions)
        if not tps:
            return batch
        self._rr = (self._rr + 1) % len(tps)
        for tp in tps[self._rr :] + tps[: self._rr]:
            want = max_records - len(batch)
            if want <= 0:
                break
            rows = self.conn.execute(
                "SELECT offset, ts, key, value FROM messages"
                " WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (tp[0], tp[1], self._positions[tp], want),
            ).fetchall()
            if not rows:
                continue
            offsets, ts, keys, values = (list(c) for c in zip(*rows, strict=True))
            batch.extend(
                MessageBatch([tp[0]] * len(rows), [tp[1]] * len(rows), offsets, ts, keys, values)
            )
            self._positions[tp] = offsets[-1] + 1
        return batch

    def commit(self, offsets: dict[TopicPartition, int], wait: bool = True) -> None:
        _transaction(
            self.conn,
            lambda: _store_offsets(self.conn, self.group, offsets),
            f"commit offsets of group {self.group!r}",
        )

    def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        rows = self.conn.execute(
            "SELECT topic, partition, offset FROM group_offsets WHERE grp = ?", (self.group,)
        )
        wanted = set(partitions)
        return {(t, p): o for t, p, o in rows if (t, p) in wanted}

    def seek(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, o in offsets.items():
            if tp in self._positions:
                self._positions[tp] = o

    def assignment(self) -> list[TopicPartition]:
        return sorted(self._positions)

    def lag(self) -> int:
        ends: dict[TopicPartition, int] = {}
        for t in {t for t, _ in self._positions}:
            ends.update({(t, p): o for p, o in _end_offsets(self.conn, t).items()})
        return sum(max(0, ends.get(tp, 0) - o) for tp, o in self._positions.items())

    def close(self) -> None:
        """Run ``on_revoke`` for every owned partition, then leave the group."""
        if self._closed:
            return
        self._closed = True
        try:
            owned = sorted(self._positions)
            if owned and self.on_revoke:
                self.on_revoke(owned)
        finally:
            self._positions.clear()
            conn = self.conn

            def leave() -> None:
                for table in ("owners", "members"):
                    conn.execute(
                        f"DELETE FROM {table} WHERE grp = ? AND member = ?",
                        (self.group, self.member),
                    )

            try:
                _transaction(conn, leave, f"leave group {self.group!r}")
            finally:
                conn.close()
