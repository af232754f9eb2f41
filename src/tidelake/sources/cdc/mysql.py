"""Native MySQL / MariaDB CDC: the row-based binlog read as a replica (python-mysql-replication).

Guarantees:

- **Position** ``{binlog:<name>: file_number << 32 | offset}``: the end of the last
  transaction handed out. One replica connection reads on from that position, kept open
  between reads (the server's heartbeat wakes an idle one every ``poll_interval``), and
  hands out whole transactions only (rows are buffered until their ``COMMIT``/XID event),
  so resuming from the sink's stored position re-reads nothing and skips nothing.
- **Acknowledged after the sink committed**: the only copy of the position is the sink's
  checkpoint (a replica's position lives with the replica); the binlog must be retained
  (``binlog_expire_logs_seconds``) longer than a flow may be stopped.
- **Initial snapshot**: on first start the tables are read in one ``START TRANSACTION WITH
  CONSISTENT SNAPSHOT`` whose binlog position is exact (MariaDB: ``binlog_snapshot_file/
  position``; MySQL: taken under a brief ``FLUSH TABLES WITH READ LOCK``), emitted as ``r``
  events, then streaming starts at that position. A crash during the snapshot restarts it
  (rows already landed are re-sent as ``r``, which an upsert absorbs).
- Needs ``binlog_format=ROW``, ``binlog_row_image=FULL`` and ``binlog_row_metadata=FULL``
  (column names in the binlog: ``ALTER TABLE ... ADD COLUMN`` reaches the events at once),
  and a user with ``REPLICATION SLAVE, REPLICATION CLIENT`` and ``SELECT``.

Events carry Debezium's MySQL envelope: topic ``<prefix>.<database>.<table>``, ``source``
with ``connector: mysql``, ``db``, ``table``, ``file``, ``pos``, ``server_id``, ``ts_ms``.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import logging
import time
import zlib
from typing import TYPE_CHECKING, Any

from tidelake import extras
from tidelake.errors import ConfigError, ConnectorError
from tidelake.runtime.base import Batch, Checkpoint, FlowContext, Source
from tidelake.sources.cdc.envelope import VERSION, EnvelopeBuilder, default_name, empty, now_ms

if TYPE_CHECKING:
    from tidelake.sources.cdc import CdcConfig

log = logging.getLogger(__name__)


def pack(file: str, pos: int) -> int:
    """``binlog.000042`` + offset -> one increasing integer (the checkpoint value)."""
    return int(file.rsplit(".", 1)[1]) << 32 | pos


def unpack(position: int, base: str) -> tuple[str, int]:
    """The inverse of ``pack``; ``base`` is the binlog's base name (``binlog``)."""
    return f"{base}.{position >> 32:06d}", position & 0xFFFFFFFF


class MysqlCdc(Source):
    """The ``mysql`` engine of the ``cdc`` source."""

    _stream: Any = None  # the replica connection, open between reads

    def __init__(self, config: CdcConfig) -> None:
        super().__init__(config)
        self.config: CdcConfig = config

    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        from tidelake.db import mysql_connect, mysql_settings

        extras.load("pymysqlreplication", "cdc engine 'mysql'")
        cfg = self.config
        self.ctx = ctx
        url = ctx.pipeline.url(cfg.database or ctx.pipeline.database)
        if not url.startswith(("mysql://", "mariadb://")):
            raise ConfigError(
                f"flow {ctx.flow}: cdc engine 'mysql' needs a MySQL or MariaDB database "
                "(set the source's 'database: mysql://user@host:port/db')"
            )
        self.url = url
        server = mysql_settings(url)
        self.settings = {k: server[k] for k in ("host", "port", "user")}
        self.settings["passwd"] = server["password"]
        self.conn = mysql_connect(url)
        default_db = str(server["database"] or "")
        self.tables = [(s or default_db, n) for s, n in cfg.qualified_tables(default_db)]
        self._check_server()
        self.name = f"binlog:{cfg.slot or default_name(ctx.pipeline.name, ctx.flow)}"
        # a replica id of our own per flow: two readers with one id would disconnect each other
        self.server_id = 0x10000000 | zlib.crc32(self.name.encode()) & 0x0FFFFFFF
        self._keys: dict[tuple[str, str], list[str]] = {}
        self._builder = EnvelopeBuilder()
        self._close_stream()  # reopened at the position by the next read
        stored = checkpoint.get(self.name)
        self._snapshot: _Snapshot | None = None
        if stored is None and cfg.snapshot == "initial":
            self._snapshot = _Snapshot(self)
            self._position = pack(*self._snapshot.position)
        elif stored is None:
            self._position = pack(*self._master_status())
        else:
            self._position = stored
        self._reported = stored

    def _one(self, sql: str, params: tuple[object, ...] = ()) -> tuple[Any, ...] | None:
        with self.conn.cursor() as cur:
            cur.execute(sql, params or None)
            row = cur.fetchone()
            return tuple(row) if row is not None else None

    def _check_server(self) -> None:
        wanted = {"binlog_format": "ROW", "binlog_row_image": "FULL"}
        for var, value in wanted.items():
            row = self._one(f"SELECT @@GLOBAL.{var}")
            if row is None or str(row[0]).upper() != value:
                raise ConnectorError(
                    f"cdc: the MySQL server has {var}={row[0] if row else None}; the mysql engine"
                    f" needs {var}={value} (set it in the server's config and restart it)"
                )
        base = self._one("SELECT @@GLOBAL.log_bin_basename")
        if base is None or base[0] is None:
            raise ConnectorError("cdc: the MySQL server has no binlog (set log_bin and server_id)")
        self.base = str(base[0]).rsplit("/", 1)[-1]
        self.mariadb = "mariadb" in str(self._one("SELECT VERSION()") or "").lower()
        for schema, name in self.tables:
            if (
                self._one(
                    "SELECT 1 FROM information_schema.tables WHERE table_schema = %s"
                    " AND table_name = %s",
                    (schema, name),
                )
                is None
            ):
                raise ConfigError(
                    f"flow {self.ctx.flow}: cdc table {schema}.{name} does not exist "
                    "(create it first, or fix 'tables')"
                )

    def _master_status(self) -> tuple[str, int]:
        row = self._one("SHOW MASTER STATUS")
        if row is None:
            raise ConnectorError("cdc: SHOW MASTER STATUS is empty: the server has no binlog")
        return str(row[0]), int(row[1])

    def key(self, schema: str, table: str, refresh: bool = False) -> list[str]:
        """Primary-key columns of ``schema.table`` (cached; refreshed after DDL)."""
        if refresh or (schema, table) not in self._keys:
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT column_name FROM information_schema.key_column_usage"
                    " WHERE table_schema = %s AND table_name = %s AND constraint_name = 'PRIMARY'"
                    " ORDER BY ordinal_position",
                    (schema, table),
                )
                self._keys[(schema, table)] = [str(r[0]) for r in cur.fetchall()]
        return self._keys[(schema, table)]

    def read(self, max_records: int, timeout: float) -> Batch:
        if self._snapshot is not None:
            batch = self._snapshot.read(max(1, max_records))
            if self._snapshot.done:
                self._snapshot = None
                self._reported = self._position
                return Batch(batch, {self.name: self._position})
            return Batch(batch)
        self._poll(max(1, max_records), time.monotonic() + timeout)
        table = self._builder.take() if len(self._builder) else empty()
        positions: Checkpoint = {}
        if self._position != self._reported:
            positions = {self.name: self._position}
            self._reported = self._position
        return Batch(table, positions)

    def _open_stream(self) -> Any:
        """A replica connection reading from the position, kept open between reads; the
        server's heartbeat every ``poll_interval`` wakes an idle read up."""
        from pymysqlreplication import BinLogStreamReader
        from pymysqlreplication.event import HeartbeatLogEvent, QueryEvent, RotateEvent, XidEvent
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        file, pos = unpack(self._position, self.base)
        self._pending: list[tuple[Any, str]] = []  # row events of the open transaction
        return BinLogStreamReader(
            connection_settings=self.settings,
            server_id=self.server_id,
            log_file=file,
            log_pos=pos,
            resume_stream=True,
            blocking=True,
            slave_heartbeat=self.config.poll_interval,
            is_mariadb=False,  # with True it ignores log_file/log_pos (resumes by GTID only)
            only_events=[
                WriteRowsEvent,
                UpdateRowsEvent,
                DeleteRowsEvent,
                XidEvent,
                QueryEvent,
                RotateEvent,
                HeartbeatLogEvent,
            ],
            freeze_schema=False,
        )

    def _poll(self, max_records: int, deadline: float) -> None:
        """Read whole transactions until ``max_records`` or ``deadline``; a transaction open
        at the deadline stays buffered for the next read. Any error closes the stream, which
        reopens at the position (the end of the last whole transaction)."""
        from pymysqlreplication.event import HeartbeatLogEvent, QueryEvent, RotateEvent, XidEvent

        if self._stream is None:
            self._stream = self._open_stream()
        stream, pending = self._stream, self._pending
        wanted = {f"{s}.{n}" for s, n in self.tables}
        try:
            for event in stream:
                if isinstance(event, XidEvent) or (
                    isinstance(event, QueryEvent) and event.query.strip().upper() == "COMMIT"
                ):
                    end = event.packet.log_pos
                    for rows_event, f in pending:
                        self._emit(rows_event, f, end)
                    pending.clear()
                    self._position = pack(stream.log_file, end)
                    if len(self._builder) >= max_records:
                        break
                elif isinstance(event, QueryEvent):
                    if event.query.strip().upper() not in ("BEGIN", "XA START"):
                        self._keys.clear()  # DDL (e.g. ALTER TABLE): keys may have changed
                        if not pending:
                            self._position = pack(stream.log_file, event.packet.log_pos)
                elif not isinstance(event, (RotateEvent, HeartbeatLogEvent)) and (
                    f"{event.schema}.{event.table}" in wanted
                ):
                    pending.append((event, stream.log_file))
                if time.monotonic() >= deadline:
                    break
        except BaseException:
            self._close_stream()
            raise

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _emit(self, event: Any, file: str, end: int) -> None:
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent

        schema, table = event.schema, event.table
        keys = self.key(schema, table)
        ts = now_ms()
        source = {
            "version": VERSION,
            "connector": "mysql",
            "name": self.config.topic_prefix,
            "ts_ms": int(event.timestamp) * 1000,
            "snapshot": "false",
            "db": schema,
            "table": table,
            "server_id": event.packet.server_id,
            "file": file,
            "pos": end,
            "lsn": pack(file, end),
        }
        topic = f"{self.config.topic_prefix}.{schema}.{table}"
        add = self._builder.add

        def key_of(row: dict[str, object]) -> dict[str, object] | None:
            return {k: row.get(k) for k in keys} if keys else None

        for row in event.rows:
            if isinstance(event, UpdateRowsEvent):
                before, after = json_row(row["before_values"]), json_row(row["after_values"])
                if keys and key_of(before) != key_of(after):  # a key change, as Debezium
                    add(topic, key_of(before), before, None, "d", ts, source)
                    add(topic, key_of(after), None, after, "c", ts, source)
                else:
                    add(topic, key_of(after), before, after, "u", ts, source)
            elif isinstance(event, DeleteRowsEvent):
                before = json_row(row["values"])
                add(topic, key_of(before), before, None, "d", ts, source)
            else:
                after = json_row(row["values"])
                add(topic, key_of(after), None, after, "c", ts, source)

    def close(self) -> None:
        if getattr(self, "_snapshot", None) is not None:
            self._snapshot.close()  # type: ignore[union-attr]
        self._close_stream()
        if hasattr(self, "conn"):
            self.conn.close()


def json_row(row: dict[str, Any]) -> dict[str, object]:
    """Column values as JSON-ready Python values, as Debezium renders them: decimals as
    numbers, bytes as base64, times as ``HH:MM:SS``, sets as comma-joined text."""
    out: dict[str, object] = {}
    for k, v in row.items():
        if isinstance(v, decimal.Decimal):
            v = float(v)
        elif isinstance(v, bytes):
            v = base64.b64encode(v).decode()
        elif isinstance(v, dt.timedelta):
            v = str(v)
        elif isinstance(v, set):
            v = ",".join(sorted(v))
        out[k] = v
    return out


class _Snapshot:
    """Current rows as ``r`` events, read in one consistent snapshot at a known position."""

    def __init__(self, src: MysqlCdc) -> None:
        import pymysql.cursors

        from tidelake.db import mysql_connect

        self.src = src
        self.done = False
        self.conn = mysql_connect(src.url, cursorclass=pymysql.cursors.SSCursor)
        with self.conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            if src.mariadb:
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
                status = {str(k).lower(): str(v) for k, v in cur.fetchall()}
                self.position = (
                    status["binlog_snapshot_file"].rsplit("/", 1)[-1],
                    int(status["binlog_snapshot_position"]),
                )
            else:  # MySQL: no snapshot position; hold writes off while taking both
                cur.execute("FLUSH TABLES WITH READ LOCK")
                try:
                    cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                    cur.execute("SHOW MASTER STATUS")
                    row = cur.fetchone()
                    self.position = (str(row[0]), int(row[1]))
                finally:
                    cur.execute("UNLOCK TABLES")
        self._tables = iter(src.tables)
        self._cursor: Any = None
        self._current: tuple[str, str, list[str], list[str]] | None = None

    def read(self, max_records: int) -> Any:
        b = self.src._builder
        while len(b) < max_records:
            if self._cursor is None:
                try:
                    schema, name = next(self._tables)
                except StopIteration:
                    self.done = True
                    break
                self._cursor = self.conn.cursor()
                self._cursor.execute(f'SELECT * FROM "{schema}"."{name}"')
                cols = [d[0] for d in self._cursor.description]
                self._current = (schema, name, cols, self.src.key(schema, name))
            rows = self._cursor.fetchmany(max_records - len(b))
            if not rows:
                self._cursor.close()
                self._cursor = None
                continue
            assert self._current is not None
            schema, name, cols, keys = self._current
            ts = now_ms()
            file, pos = self.position
            source = {
                "version": VERSION,
                "connector": "mysql",
                "name": self.src.config.topic_prefix,
                "ts_ms": ts,
                "snapshot": "true",
                "db": schema,
                "table": name,
                "server_id": 0,
                "file": file,
                "pos": pos,
                "lsn": pack(file, pos),
            }
            topic = f"{self.src.config.topic_prefix}.{schema}.{name}"
            for row in rows:
                after = json_row(dict(zip(cols, row, strict=True)))
                b.add(
                    topic,
                    {k: after[k] for k in keys} if keys else None,
                    None,
                    after,
                    "r",
                    ts,
                    source,
                )
        table = b.take() if len(b) else empty()
        if self.done:
            self.close()
        return table

    def close(self) -> None:
        if self.conn.open:
            self.conn.rollback()
            self.conn.close()
