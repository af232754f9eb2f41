"""The query layer as the API runs it: sandboxed engines in worker processes, a pool.

Each engine is a ``tidelake.lake.QueryEngine`` whose DuckDB connection is locked
down once, right after the engine's own setup, and then frozen with
``lock_configuration``:

- ``enable_external_access = false`` and ``python_enable_replacements = false`` (set
  by ``QueryEngine``, whose tables are registered Arrow objects): no file at all, not
  even inside the lake, no network, no ``INSTALL``/``LOAD``, no scan of Python
  variables by name; ``COPY``, ``ATTACH`` and ``EXPORT`` fail in the engine itself;
- only single ``SELECT`` statements run (DuckDB's own parser decides, on the exact
  text that runs): no ``SET``, DDL or DML;
- ``autoinstall_known_extensions`` / ``autoload_known_extensions`` /
  ``allow_community_extensions`` off;
- ``memory_limit``, ``threads`` and ``max_temp_directory_size = 0`` (no spill
  files): a query that needs more memory fails instead of filling the disk.

User SQL runs in worker processes (``tidelake.serve.worker``), at most
``Limits.engines`` at once: a query past its time limit, or a worker whose memory
passes ``memory_limit``, is killed within ``worker._TICK`` seconds, and a result
larger than ``max_bytes`` is refused before it leaves the worker. A request that
finds every engine busy for ``Limits.wait`` seconds gets ``EngineBusy`` (503).
Catalog calls (no user SQL) run on one in-process engine.

``EnginePool.select`` is the one door every client's SQL goes through (``POST /api/query``,
the PostgreSQL wire endpoint): the guard, the row cap, then a worker. A ``system`` query
(the ``pg_catalog``/``information_schema`` queries PostgreSQL clients send) runs in the
same workers under the same limits, on a second locked-down connection that holds only
empty copies of the pipeline's tables: its catalog views show their names and types.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from tidelake.config import Pipeline
from tidelake.errors import QueryError
from tidelake.identifiers import quote
from tidelake.lake.query import AsOf, QueryEngine
from tidelake.lake.schema import arrow_schema
from tidelake.serve import sql_guard
from tidelake.serve.sql_guard import Catalog
from tidelake.serve.worker import (
    STARTUP,
    QueryCancelled,
    ResultTooLarge,
    Worker,
    WorkerKilled,
    setup_frame,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

_PATH = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+|(?<![\w/.])/(?!api/)(?:[^\s'\"/]+/)+[^\s'\"]*"
)
"""URLs and absolute paths of two or more segments (API routes like ``/api/tables`` stay)."""


@dataclass(frozen=True)
class Limits:
    """What one API query may use."""

    max_rows: int = 10_000
    timeout: float = 10.0
    memory_limit: str = "1GB"
    threads: int = 2
    engines: int = 2
    max_bytes: int = 64 * 2**20
    """Largest result (Arrow bytes) a query may return; beyond it the answer is 413."""
    wait: float = 1.0
    """Seconds a request waits for a free engine before the answer is 503."""
    ingests: int = 8
    """Ingest bodies of the largest size (``max_body``) at once: requests in flight may hold
    ``ingests * max_body`` bytes by their ``Content-Length``; one more is a 503 before its
    body is read."""


class QueryTimeout(QueryError):
    """The query ran past its time limit and its worker was killed."""


class EngineBusy(QueryError):
    """Every engine stayed busy for ``Limits.wait`` seconds."""


def sanitize(message: str) -> str:
    """A DuckDB/engine error as the API shows it: first line, no file paths, bounded."""
    first = message.strip().splitlines()[0] if message.strip() else "query failed"
    return _PATH.sub("<path>", first)[:300]


class SandboxedEngine(QueryEngine):
    """A ``QueryEngine`` whose connection is locked down for untrusted SQL."""

    def __init__(self, pipeline: Pipeline, limits: Limits) -> None:
        super().__init__(pipeline)
        self.limits = limits
        _lock_down(self._con, limits)
        self._system: tuple[object, duckdb.DuckDBPyConnection] | None = None

    def settings(self) -> dict[str, str]:
        """The sandbox settings as DuckDB reports them (for tests and diagnostics)."""
        rows = self._con.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN ("
            "'enable_external_access', 'allowed_directories', 'autoinstall_known_extensions', "
            "'autoload_known_extensions', 'lock_configuration', 'memory_limit', 'threads', "
            "'python_enable_replacements', 'max_temp_directory_size')"
        ).fetchall()
        return {str(k): str(v) for k, v in rows}

    def run(
        self,
        query: str,
        params: Sequence[Any] | None,
        bind: str | None,
        as_of: AsOf,
        system: bool = False,
    ) -> pa.Table:
        """Run ``query``; with ``params`` the table ``bind`` (default: every table the query
        names) is bound first through ``sql``; ``system`` runs it on the schema-only copy."""
        if not system and (params is None or bind is None):
            return self.sql(query, as_of=as_of, params=params)
        _only_select(query)
        if system:
            con = self._system_connection()
        else:
            con = self._con
            self.sql(f"SELECT * FROM {bind} LIMIT 0", as_of=as_of)
        with self._lock:
            try:
                return con.sql(query, params=list(params or [])).to_arrow_table()
            except duckdb.Error as e:
                raise QueryError(str(e)) from None

    def _system_connection(self) -> duckdb.DuckDBPyConnection:
        """A connection whose ``lake``/``db`` schemas hold empty tables shaped like the
        pipeline's, rebuilt when a table appears, goes or changes its schema."""
        with self._lock:
            lake = self._lake_pointers()
            shapes = [
                ("lake", name, arrow_schema(self._table(name, location).schema()))
                for name, location in sorted(lake.items())
            ] + [("db", name, self.db.read(name).schema) for name in self.db.names()]
            key = [(s, n, str(schema)) for s, n, schema in shapes]
            if self._system is not None and self._system[0] == key:
                return self._system[1]
            con = duckdb.connect()
            from tidelake.serve.pgwire.catalog import macros  # PostgreSQL clients' spellings

            con.execute("CREATE SCHEMA lake; CREATE SCHEMA db")
            for macro in macros():
                con.execute(macro)
            for schema, name, arrow in shapes:
                con.register("shape", arrow.empty_table())
                con.execute(f"CREATE TABLE {schema}.{quote(name)} AS SELECT * FROM shape")
                con.unregister("shape")
            con.execute("SET temp_directory = ''")
            con.execute("SET enable_external_access = false")
            con.execute("SET python_enable_replacements = false")
            _lock_down(con, self.limits)
            if self._system is not None:
                self._system[1].close()
            self._system = (key, con)
            return con

    def close(self) -> None:
        if self._system is not None:
            self._system[1].close()
        super().close()


def _lock_down(con: duckdb.DuckDBPyConnection, limits: Limits) -> None:
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET allow_community_extensions = false")
    con.execute("SET max_temp_directory_size = '0KB'")
    con.execute(f"SET memory_limit = '{_size(limits.memory_limit)}'")
    con.execute(f"SET threads = {int(limits.threads)}")
    con.execute("SET lock_configuration = true")


def strip_terminator(sql: str) -> str:
    """The statement without a trailing ``;`` (comments and strings are respected)."""
    try:
        tokens = duckdb.tokenize(sql)
    except duckdb.Error:
        return sql
    text = sql.encode()  # token positions are byte offsets
    code = [(pos, kind) for pos, kind in tokens if kind != duckdb.token_type.comment]
    while code and code[-1][1] == duckdb.token_type.operator and text[code[-1][0]] == ord(";"):
        text = text[: code[-1][0]]
        code.pop()
    return text.decode()


_SYSTEM = Catalog(frozenset(), frozenset(), system=True)


def _only_select(query: str) -> None:
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise QueryError(f"SQL syntax error: {e}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError("only a single read-only SELECT statement is allowed")


def _size(text: str) -> str:
    if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", text.strip(), re.IGNORECASE):
        raise ValueError(f"memory limit {text!r}: use a size such as 512MB or 2GB")
    return text.strip()


def _bytes(text: str) -> int:
    """``memory_limit`` in bytes, as DuckDB reads it (KB = 1000, KiB = 1024)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT])(i?)B", _size(text), re.IGNORECASE)
    assert m is not None
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** (1 + "KMGT".index(m.group(2).upper())))


class EnginePool:
    """At most ``limits.engines`` worker processes, each used by one request at a time."""

    def __init__(self, pipeline: Pipeline, limits: Limits) -> None:
        self.pipeline = pipeline
        self.limits = limits
        self._setup = setup_frame(pipeline, asdict(limits))
        self._memory = _bytes(limits.memory_limit)
        self._idle: queue.LifoQueue[Worker] = queue.LifoQueue()
        self._all: list[Worker] = []
        self._count = 0
        self._create = threading.Lock()
        self._local: SandboxedEngine | None = None
        self._closed = False
        self._ever = False  # a worker has started (later, a replacement starting means busy)

    def _acquire(self, wait: float) -> Worker:
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                break
            if worker.alive:
                return worker
            self._forget(worker)
        with self._create:
            create = self._count < self.limits.engines
            if create:
                self._count += 1
        if create:
            try:
                worker = Worker(self._setup, self._memory)
            except BaseException:
                with self._create:
                    self._count -= 1
                raise
            with self._create:
                self._all.append(worker)
                self._ever = True
            return worker
        with self._create:
            cold = not self._ever and self._count > 0
        try:  # at start-up no worker is busy, they are starting: wait rather than answer 503
            return self._idle.get(timeout=STARTUP if cold else max(wait, 0.0))
        except queue.Empty:
            raise EngineBusy(
                f"all {self.limits.engines} query engines are busy; retry in a moment"
            ) from None

    def _release(self, worker: Worker) -> None:
        if worker.alive and not worker.worn:
            self._idle.put(worker)
        else:
            worker.kill()
            self._forget(worker)
            self.warm()  # a killed or worn worker's replacement starts now, not on the next request

    def warm(self) -> None:
        """Start workers up to ``limits.engines`` in the background."""

        def start() -> None:
            with self._create:
                if self._count >= self.limits.engines:
                    return
                self._count += 1
            try:
                worker = Worker(self._setup, self._memory)
            except Exception:
                with self._create:
                    self._count -= 1
                log.exception("could not start a query worker")
                return
            with self._create:
                closed = self._closed
                if not closed:
                    self._all.append(worker)
                self._ever = True
            if closed:  # the pool closed while this worker started
                worker.close()
            else:
                self._idle.put(worker)

        for _ in range(self.limits.engines):
            threading.Thread(target=start, daemon=True, name="tidelake-worker-start").start()

    def _forget(self, worker: Worker) -> None:
        with self._create:
            if worker in self._all:
                self._all.remove(worker)
                self._count -= 1

    def _engine(self) -> SandboxedEngine:
        with self._create:
            if self._local is None:
                self._local = SandboxedEngine(self.pipeline, self.limits)
            return self._local

    def catalog(self) -> Catalog:
        """The names user SQL may read right now."""
        engine = self._engine()
        return Catalog(frozenset(engine.lake_names()), frozenset(engine.db.names()))

    def select(
        self,
        sql: str,
        rows: int,
        params: Sequence[Any] | None = None,
        as_of: AsOf = None,
        system: bool = False,
        cancel: threading.Event | None = None,
    ) -> pa.Table:
        """At most ``rows`` rows of user query ``sql``, checked by the guard before and
        after it is wrapped in the row cap (``system``: a catalog query, see the module)."""
        catalog = _SYSTEM if system else self.catalog()
        sql_guard.check(sql, catalog)
        wrapped = f"SELECT * FROM (\n{strip_terminator(sql)}\n) AS tidelake_query LIMIT {rows}"
        sql_guard.check(wrapped, catalog)
        return self.query(wrapped, params, as_of=as_of, system=system, cancel=cancel)

    def call(self, fn: Callable[[SandboxedEngine], T]) -> T:
        """Run a catalog call (no user SQL) on the in-process engine."""
        return fn(self._engine())

    def query(
        self,
        query: str,
        params: Sequence[Any] | None = None,
        bind: str | None = None,
        as_of: AsOf = None,
        timeout: float | None = None,
        system: bool = False,
        cancel: threading.Event | None = None,
    ) -> pa.Table:
        """Run one guarded query in a worker under the time, memory and result-size limits;
        setting ``cancel`` stops it (``QueryCancelled``)."""
        limit = self.limits.timeout if timeout is None else timeout
        worker = self._acquire(min(self.limits.wait, limit))
        request = {
            "sql": query,
            "params": list(params) if params is not None else None,
            "bind": bind,
            "as_of": as_of,
            "system": system,
        }
        try:
            return worker.run(request, time.monotonic() + limit, limit, cancel)
        except WorkerKilled as e:
            if e.reason == "time":
                raise QueryTimeout(
                    f"query stopped after the {limit:g} s time limit "
                    "(filter or aggregate more, or query fewer rows)"
                ) from None
            raise QueryError(
                f"query stopped: it needed more than the {self.limits.memory_limit} memory "
                "limit (filter or aggregate more, or query fewer rows)"
            ) from None
        except (ResultTooLarge, QueryCancelled):
            raise
        except QueryError as e:
            raise QueryError(sanitize(str(e))) from None
        finally:
            self._release(worker)

    def close(self) -> None:
        with self._create:
            self._closed = True
            workers, self._all = list(self._all), []
            self._count = 0
            local, self._local = self._local, None
        for worker in workers:
            worker.close()
        if local is not None:
            local.close()


__all__ = [
    "EngineBusy",
    "EnginePool",
    "Limits",
    "QueryCancelled",
    "QueryTimeout",
    "ResultTooLarge",
    "SandboxedEngine",
    "sanitize",
    "strip_terminator",
]
