"""The pipeline's operational database (SQLite, PostgreSQL, MySQL/MariaDB) behind one small
interface.

Used by the ``table`` sink (rows and checkpoints in one transaction) and by the
query layer (reading tables as Arrow). Identifiers are always quoted and values
always bound or bulk-copied, never pasted into SQL.
"""

from __future__ import annotations

import io
import re
import urllib.parse
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from tidelake import extras
from tidelake.errors import ConfigError, ConnectorError
from tidelake.formats.json import nested_to_json
from tidelake.identifiers import plain as ident
from tidelake.runtime.base import Checkpoint
from tidelake.sqlite_wal import open_wal
from tidelake.store_types import Store, column_type

CHECKPOINTS = "_tidelake_checkpoints"


class Database(ABC):
    """One connection to the pipeline's database, for the sinks that write it (queries read
    it through ``lake.query``'s read-only reader)."""

    @abstractmethod
    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[None]:
        """Everything inside commits together; ``lock`` serializes writers of that name."""

    @abstractmethod
    def columns(self, table: str) -> dict[str, str]:
        """Column name -> declared type; empty when the table does not exist."""

    STORE: ClassVar[Store]

    def sql_type(self, t: pa.DataType) -> str:
        return column_type(t, self.STORE)

    @abstractmethod
    def insert(self, table: str, data: pa.Table, key: list[str] | None) -> None:
        """Append ``data``; with ``key``, insert-or-update by key (the last row of a key wins)."""

    @abstractmethod
    def delete(self, table: str, keys: pa.Table) -> None:
        """Delete the rows whose key columns equal a row of ``keys``."""

    @abstractmethod
    def execute(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]: ...

    @abstractmethod
    def run_script(self, sql: str) -> None:
        """Run several ``;``-separated statements (trusted DDL from the pipeline author)."""

    @abstractmethod
    def close(self) -> None: ...

    def ensure_table(self, table: str, schema: pa.Schema, key: list[str] | None) -> None:
        """Create ``table`` from ``schema`` or add the columns it lacks (schema evolution)."""
        have = self.columns(table)
        if not have:
            cols = ", ".join(f"{ident(f.name)} {self._column_type(f)}" for f in schema)
            pk = f", PRIMARY KEY ({', '.join(map(ident, key))})" if key else ""
            self.execute(f"CREATE TABLE IF NOT EXISTS {ident(table)} ({cols}{pk})")
            return
        for f in schema:
            if f.name not in have:
                self.execute(
                    f"ALTER TABLE {ident(table)} ADD COLUMN {ident(f.name)} {self.sql_type(f.type)}"
                )

    def _column_type(self, f: pa.Field) -> str:
        return self.sql_type(f.type)

    def create_checkpoints_table(self) -> None:
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (flow TEXT NOT NULL, position TEXT NOT NULL,"
            " next_offset BIGINT NOT NULL, PRIMARY KEY (flow, position))"
        )

    _checkpoints_ready = False

    def load_checkpoint(self, flow: str) -> Checkpoint:
        if not self._checkpoints_ready:
            self.create_checkpoints_table()
            self._checkpoints_ready = True
        rows = self.execute(
            f"SELECT position, next_offset FROM {CHECKPOINTS} WHERE flow = {self.param}", (flow,)
        )
        return {str(p): int(o) for p, o in rows}  # type: ignore[call-overload]

    @abstractmethod
    def save_checkpoint(self, flow: str, checkpoint: Checkpoint) -> None: ...

    param = "?"


class SqliteDatabase(Database):
    STORE = "sqlite"

    def __init__(self, path: str) -> None:
        self.conn = open_wal(path)

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")  # one writer at a time: the lock is the database
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def columns(self, table: str) -> dict[str, str]:
        return {r[1]: r[2] for r in self.conn.execute(f"PRAGMA table_info({ident(table)})")}

    def _prepare(self, data: pa.Table) -> pa.Table:
        data = nested_to_json(data)
        for i, f in enumerate(data.schema):
            if pa.types.is_temporal(f.type) or pa.types.is_decimal(f.type):
                data = data.set_column(i, f.name, pc.cast(data.column(i), pa.string()))
        return data

    def insert(self, table: str, data: pa.Table, key: list[str] | None) -> None:
        data = self._prepare(data)
        names = data.column_names
        cols = ", ".join(map(ident, names))
        sql = f"INSERT INTO {ident(table)} ({cols}) VALUES ({', '.join('?' * len(names))})"
        if key:
            updates = ", ".join(f"{ident(c)} = excluded.{ident(c)}" for c in names if c not in key)
            conflict = ", ".join(map(ident, key))
            sql += f" ON CONFLICT ({conflict}) DO " + (
                f"UPDATE SET {updates}" if updates else "NOTHING"
            )
        self.conn.executemany(sql, zip(*(c.to_pylist() for c in data.columns), strict=True))

    def delete(self, table: str, keys: pa.Table) -> None:
        keys = self._prepare(keys)
        where = " AND ".join(f"{ident(c)} = ?" for c in keys.column_names)
        self.conn.executemany(
            f"DELETE FROM {ident(table)} WHERE {where}",
            zip(*(c.to_pylist() for c in keys.columns), strict=True),
        )

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def run_script(self, sql: str) -> None:
        self.conn.executescript(sql)

    def save_checkpoint(self, flow: str, checkpoint: Checkpoint) -> None:
        self.conn.executemany(
            f"INSERT OR REPLACE INTO {CHECKPOINTS} VALUES (?, ?, ?)",
            [(flow, k, v) for k, v in checkpoint.items()],
        )

    def close(self) -> None:
        self.conn.close()


class PostgresDatabase(Database):
    """PostgreSQL through psycopg 3; bulk loads go through COPY."""

    STORE = "postgresql"

    param = "%s"

    def __init__(self, url: str) -> None:
        psycopg = extras.load("psycopg", "a postgresql:// database")
        try:
            self.conn = psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as e:
            raise ConnectorError(
                f"cannot connect to PostgreSQL at {_redact(url)}: {str(e).strip()} "
                "(is it running? `tidelake infra up postgres` starts a local one)"
            ) from e

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[None]:
        with self.conn.transaction():
            if lock is not None:
                self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(lock.encode()),))
            yield

    def columns(self, table: str) -> dict[str, str]:
        rows = self.conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
            (table,),
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def _copy(self, table: str, data: pa.Table) -> None:
        buf = io.BytesIO()
        pcsv.write_csv(nested_to_json(data), buf, pcsv.WriteOptions(include_header=False))
        cols = ", ".join(map(ident, data.column_names))
        with self.conn.cursor().copy(f"COPY {ident(table)} ({cols}) FROM STDIN (FORMAT csv)") as cp:
            cp.write(buf.getvalue())

    def _stage(self, table: str, data: pa.Table) -> str:
        stage = "_tl_stage"
        self.conn.execute(f"DROP TABLE IF EXISTS {stage}")
        self.conn.execute(
            f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT * FROM {ident(table)} WITH NO DATA"
        )
        self.conn.execute(f"ALTER TABLE {stage} ADD COLUMN _tl_ord BIGINT")
        self._copy(stage, data.append_column("_tl_ord", pa.array(range(data.num_rows), pa.int64())))
        return stage

    def insert(self, table: str, data: pa.Table, key: list[str] | None) -> None:
        if not key:
            self._copy(table, data)
            return
        stage = self._stage(table, data)
        names = data.column_names
        cols = ", ".join(map(ident, names))
        keys = ", ".join(map(ident, key))
        updates = ", ".join(f"{ident(c)} = excluded.{ident(c)}" for c in names if c not in key)
        action = f"UPDATE SET {updates}" if updates else "NOTHING"
        self.conn.execute(
            f"INSERT INTO {ident(table)} ({cols}) SELECT DISTINCT ON ({keys}) {cols} FROM {stage}"
            f" ORDER BY {keys}, _tl_ord DESC ON CONFLICT ({keys}) DO {action}"
        )

    def delete(self, table: str, keys: pa.Table) -> None:
        stage = self._stage(table, keys)
        match = " AND ".join(f"t.{ident(c)} = s.{ident(c)}" for c in keys.column_names)
        self.conn.execute(f"DELETE FROM {ident(table)} t USING {stage} s WHERE {match}")

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        cur = self.conn.execute(sql, params or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []

    def run_script(self, sql: str) -> None:
        with self.transaction(lock="tidelake:init_sql"):
            self.conn.execute(sql.encode())  # bytes: psycopg sends it as one multi-statement query

    def create_checkpoints_table(self) -> None:
        # Concurrent CREATE TABLE IF NOT EXISTS can still collide in pg_type: serialize it.
        with self.transaction(lock=CHECKPOINTS):
            super().create_checkpoints_table()

    def save_checkpoint(self, flow: str, checkpoint: Checkpoint) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {CHECKPOINTS} VALUES (%s, %s, %s) ON CONFLICT (flow, position)"
                " DO UPDATE SET next_offset = excluded.next_offset",
                [(flow, k, v) for k, v in checkpoint.items()],
            )

    def close(self) -> None:
        self.conn.close()


class MysqlDatabase(Database):
    """MySQL or MariaDB through PyMySQL (sessions in ``ANSI_QUOTES`` mode, so identifiers are
    quoted as everywhere else); upserts are ``INSERT ... ON DUPLICATE KEY UPDATE``."""

    STORE = "mysql"

    param = "%s"
    KEY_TEXT = "VARCHAR(255)"  # InnoDB cannot index TEXT without a prefix length

    def __init__(self, url: str) -> None:
        self.conn = mysql_connect(url)

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[None]:
        if lock is not None:  # a named lock, held by this session until released
            self.execute("SELECT GET_LOCK(%s, 300)", (lock[:64],))
        try:
            self.conn.begin()
            try:
                yield
            except BaseException:
                self.conn.rollback()
                raise
            self.conn.commit()
        finally:
            if lock is not None:
                self.execute("SELECT RELEASE_LOCK(%s)", (lock[:64],))

    def columns(self, table: str) -> dict[str, str]:
        rows = self.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = DATABASE() AND table_name = %s ORDER BY ordinal_position",
            (table,),
        )
        return {str(r[0]): str(r[1]) for r in rows}

    _keys: frozenset[str] = frozenset()

    def ensure_table(self, table: str, schema: pa.Schema, key: list[str] | None) -> None:
        self._keys = frozenset(key or ())
        super().ensure_table(table, schema, key)

    def _column_type(self, f: pa.Field) -> str:
        t = self.sql_type(f.type)
        return self.KEY_TEXT if f.name in self._keys and t == "LONGTEXT" else t

    def _rows(self, data: pa.Table) -> list[tuple[object, ...]]:
        data = nested_to_json(data)
        return list(zip(*(c.to_pylist() for c in data.columns), strict=True))

    def insert(self, table: str, data: pa.Table, key: list[str] | None) -> None:
        names = data.column_names
        sql = (
            f"INSERT INTO {ident(table)} ({', '.join(map(ident, names))})"
            f" VALUES ({', '.join(['%s'] * len(names))})"
        )
        if key:  # rows apply in order, so the last row of a key wins
            update = [c for c in names if c not in key] or key[:1]
            sql += " ON DUPLICATE KEY UPDATE " + ", ".join(
                f"{ident(c)} = VALUES({ident(c)})" for c in update
            )
        with self.conn.cursor() as cur:
            cur.executemany(sql, self._rows(data))

    def delete(self, table: str, keys: pa.Table) -> None:
        where = " AND ".join(f"{ident(c)} = %s" for c in keys.column_names)
        with self.conn.cursor() as cur:
            cur.executemany(f"DELETE FROM {ident(table)} WHERE {where}", self._rows(keys))

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params or None)
            return list(cur.fetchall()) if cur.description else []

    def run_script(self, sql: str) -> None:
        with self.transaction(lock="tidelake:init_sql"):
            for statement in filter(str.strip, sql.split(";")):
                self.execute(statement)

    def create_checkpoints_table(self) -> None:
        k = self.KEY_TEXT
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (flow {k} NOT NULL, position {k} NOT NULL,"
            " next_offset BIGINT NOT NULL, PRIMARY KEY (flow, position))"
        )

    def save_checkpoint(self, flow: str, checkpoint: Checkpoint) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {CHECKPOINTS} VALUES (%s, %s, %s)"
                " ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset)",
                [(flow, k, v) for k, v in checkpoint.items()],
            )

    def read_arrow(self, table: str) -> pa.Table:
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {ident(table)}")
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return (
            pa.table({n: list(c) for n, c in zip(names, zip(*rows, strict=True), strict=True)})
            if rows
            else pa.table({n: [] for n in names})
        )

    def tables(self) -> list[str]:
        rows = self.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
            " AND table_name != %s ORDER BY table_name",
            (CHECKPOINTS,),
        )
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        self.conn.close()


def mysql_settings(url: str) -> dict[str, str | int | None]:
    """``mysql://user:pw@host:port/db`` -> host, port, user, password, database (or None)."""
    parts = urllib.parse.urlsplit(url)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": urllib.parse.unquote(parts.username or "root"),
        "password": urllib.parse.unquote(parts.password or ""),
        "database": parts.path.lstrip("/") or None,
    }


def mysql_connect(url: str, **options: object) -> Any:
    """A PyMySQL connection (autocommit, ``ANSI_QUOTES``) for ``mysql://user:pw@host:port/db``."""
    pymysql = extras.load("pymysql", "a mysql:// database")
    try:
        return pymysql.connect(
            **mysql_settings(url),
            autocommit=True,
            charset="utf8mb4",
            init_command="SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')",
            **options,  # type: ignore[arg-type]
        )
    except pymysql.err.OperationalError as e:
        raise ConnectorError(
            f"cannot connect to MySQL at {_redact(url)}: {e.args[-1]} "
            "(is it running? `tidelake infra up mariadb` starts a local one)"
        ) from e


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def connect_db(url: str) -> Database:
    """``sqlite:///path`` (or ``sqlite:///:memory:``), ``postgresql://user@host:port/db`` or
    ``mysql://user:password@host:port/db`` (MySQL or MariaDB)."""
    if url.startswith("sqlite:///"):
        return SqliteDatabase(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url)
    if url.startswith(("mysql://", "mariadb://")):
        return MysqlDatabase(url)
    raise ConfigError(
        f"database url {_redact(url)!r} is not supported (use 'sqlite:///path.db',"
        " 'postgresql://user@host:port/db' or 'mysql://user@host:port/db')"
    )
