"""The query layer as the API runs it: sandboxed connections, a pool, a deadline per query.

Each pooled engine is a ``tidelake.lake.QueryEngine`` whose DuckDB connection is
locked down once, right after the engine's own setup, and then frozen with
``lock_configuration``:

- ``enable_external_access = false`` with ``allowed_directories`` = the lake
  warehouse (set by ``QueryEngine``): no file outside the lake, no network,
  no ``ATTACH``/``COPY``/``INSTALL``/``LOAD``;
- ``autoinstall_known_extensions`` / ``autoload_known_extensions`` /
  ``allow_community_extensions`` off, ``python_enable_replacements`` off (a query
  cannot scan Python variables by name);
- ``memory_limit``, ``threads`` and ``max_temp_directory_size = 0`` (no spill
  files): a query that needs more memory fails instead of filling the disk.

A query runs in the request's worker thread; a timer interrupts the connection
at the deadline (``duckdb.Connection.interrupt``), which surfaces as
``QueryTimeout``. One engine runs one request at a time, so the interrupt can
only hit the query it was armed for.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from tidelake.config import Pipeline
from tidelake.errors import QueryError
from tidelake.lake.query import AsOf, QueryEngine
from tidelake.serve.sql_guard import Catalog

T = TypeVar("T")

_PATH = re.compile(r"(?:[A-Za-z]+://)?(?:/[^\s'\"/]+)+/?")


@dataclass(frozen=True)
class Limits:
    """What one API query may use."""

    max_rows: int = 10_000
    timeout: float = 10.0
    memory_limit: str = "1GB"
    threads: int = 2
    engines: int = 2


class QueryTimeout(QueryError):
    """The query ran past its deadline and was interrupted."""


class EngineBusy(QueryError):
    """Every engine stayed busy until the request's deadline."""


def sanitize(message: str) -> str:
    """A DuckDB/engine error as the API shows it: first line, no file paths, bounded."""
    first = message.strip().splitlines()[0] if message.strip() else "query failed"
    return _PATH.sub("<path>", first)[:300]


class SandboxedEngine(QueryEngine):
    """A ``QueryEngine`` whose connection is locked down for untrusted SQL."""

    def __init__(self, pipeline: Pipeline, limits: Limits) -> None:
        super().__init__(pipeline)
        self._running = False
        self._state = threading.Lock()
        con = self._con
        if not self.warehouse.startswith("file://"):
            con.execute("SET enable_external_access = false")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET allow_community_extensions = false")
        con.execute("SET python_enable_replacements = false")
        con.execute("SET max_temp_directory_size = '0KB'")
        con.execute(f"SET memory_limit = '{_size(limits.memory_limit)}'")
        con.execute(f"SET threads = {int(limits.threads)}")
        con.execute("SET lock_configuration = true")

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
        self, query: str, params: Sequence[Any] | None, bind: str | None, as_of: AsOf
    ) -> pa.Table:
        """Run ``query``; with ``params`` the table ``bind`` is bound first through ``sql``."""
        self._set_running(True)
        try:
            if params is None:
                return self.sql(query, as_of=as_of)
            if bind is not None:
                self.sql(f"SELECT * FROM {bind} LIMIT 0", as_of=as_of)
            with self._lock:
                try:
                    return self._con.sql(query, params=list(params)).to_arrow_table()
                except duckdb.Error as e:
                    raise QueryError(str(e)) from None
        finally:
            self._set_running(False)

    def _set_running(self, running: bool) -> None:
        with self._state:
            self._running = running

    def interrupt(self) -> bool:
        """Interrupt the running query, if one is running; True when interrupted."""
        with self._state:
            if self._running:
                self._con.interrupt()
                return True
            return False


def _size(text: str) -> str:
    if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", text.strip(), re.IGNORECASE):
        raise ValueError(f"memory limit {text!r}: use a size such as 512MB or 2GB")
    return text.strip()


class EnginePool:
    """A few sandboxed engines, each used by one request at a time."""

    def __init__(self, pipeline: Pipeline, limits: Limits) -> None:
        self.pipeline = pipeline
        self.limits = limits
        self._idle: queue.LifoQueue[SandboxedEngine] = queue.LifoQueue()
        self._all: list[SandboxedEngine] = []
        self._create = threading.Lock()

    @contextmanager
    def engine(self, wait: float) -> Iterator[SandboxedEngine]:
        engine = self._acquire(wait)
        try:
            yield engine
        finally:
            self._idle.put(engine)

    def _acquire(self, wait: float) -> SandboxedEngine:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._create:
            if len(self._all) < self.limits.engines:
                engine = SandboxedEngine(self.pipeline, self.limits)
                self._all.append(engine)
                return engine
        try:
            return self._idle.get(timeout=max(wait, 0.0))
        except queue.Empty:
            raise EngineBusy("every query engine is busy; retry in a moment") from None

    def catalog(self) -> Catalog:
        """The names user SQL may read right now."""
        with self.engine(self.limits.timeout) as engine:
            return Catalog(frozenset(engine.lake_names()), frozenset(engine.db.names()))

    def call(self, fn: Callable[[SandboxedEngine], T]) -> T:
        """Run a catalog call (no user SQL) on a pooled engine."""
        with self.engine(self.limits.timeout) as engine:
            return fn(engine)

    def query(
        self,
        query: str,
        params: Sequence[Any] | None = None,
        bind: str | None = None,
        as_of: AsOf = None,
        timeout: float | None = None,
    ) -> pa.Table:
        """Run one guarded query under the deadline; ``QueryTimeout`` when it is reached."""
        limit = self.limits.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self.engine(limit) as engine:
            fired = threading.Event()

            def on_deadline() -> None:
                if engine.interrupt():
                    fired.set()

            timer = threading.Timer(max(deadline - time.monotonic(), 0.0), on_deadline)
            timer.daemon = True
            timer.start()
            try:
                return engine.run(query, params, bind, as_of)
            except QueryError as e:
                if fired.is_set():
                    raise QueryTimeout(
                        f"query stopped after the {limit:g} s time limit "
                        "(filter or aggregate more, or query fewer rows)"
                    ) from None
                raise QueryError(sanitize(str(e))) from None
            finally:
                timer.cancel()

    def close(self) -> None:
        for engine in self._all:
            engine.close()
        self._all.clear()


__all__ = ["EngineBusy", "EnginePool", "Limits", "QueryTimeout", "SandboxedEngine", "sanitize"]
