"""The one query layer (the embedded Athena): CLI, REST API and dashboard all use it.

``QueryEngine`` is a DuckDB connection in which every table of the pipeline is a
view, bound lazily when a query names it:

- a **lake** table is an Arrow dataset (``pyarrow.dataset``) over the data files of
  one snapshot, in the snapshot's schema (old files that predate a column read it
  as NULL, widened types are cast); DuckDB scans it with projection and filter
  pushdown. File lists are cached per snapshot id, so repeated queries only pay
  for a catalog lookup. Tables with delete files, renamed columns, or on S3 are
  read through pyiceberg's scan instead, cached per snapshot as well.
- a **db** table (the pipeline's SQLite/PostgreSQL database) is read into Arrow
  through the Python driver, cached until the database changes.

DuckDB itself opens no file (``enable_external_access = false``, no Python
replacement scans): whatever SQL reaches the connection reads only the registered
tables and cannot write, attach or export anything.

Names resolve as ``lake.<t>`` (always the lake table), ``db.<t>`` (always the database
table) or bare ``<t>``, which must exist in only one of them: a bare name in both is an
error naming both qualified forms. Only single read-only ``SELECT`` statements run.
``as_of`` (a snapshot id or a time)
time-travels every lake table in the query. A repeatable query's result is reused while
the tables it read keep their version (``tidelake.lake.results``).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import sqlglot
import sqlglot.errors
from pyiceberg.schema import index_name_by_id
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from sqlglot import exp

from tidelake.config import Pipeline
from tidelake.errors import QueryError
from tidelake.identifiers import quote
from tidelake.lake import checkpoints, pyiceberg_internals, results
from tidelake.lake.catalog import load_table, namespace, open_catalog, table_names, warehouse
from tidelake.lake.schema import arrow_schema
from tidelake.runtime.base import Checkpoint

_PLAN_CACHE = 256
AsOf = int | datetime | str | None
"""A snapshot id, a datetime (naive = UTC) or an ISO-8601 string; None = current."""


class AmbiguousTable(QueryError):
    """A bare table name that both the lake and the database have."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: int
    committed_at: datetime
    operation: str
    added_rows: int
    total_rows: int
    flow: str | None


@dataclass(frozen=True)
class TableInfo:
    """What ``tidelake lake tables`` / the API catalog show for one table."""

    name: str
    kind: Literal["lake", "db"]
    columns: list[Column]
    rows: int | None
    files: int | None = None
    partitions: int | None = None
    snapshots: int | None = None
    last_updated: datetime | None = None
    partition_spec: str = ""


@dataclass(frozen=True)
class TableDetail:
    """``describe``: the summary plus history, properties and stored flow checkpoints."""

    info: TableInfo
    location: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    history: list[SnapshotInfo] = field(default_factory=list)
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)


@dataclass(frozen=True)
class _Plan:
    """The data files of one snapshot, as DuckDB reads them."""

    files: list[str]
    rows: int
    partitions: int
    has_deletes: bool


def _timestamp_ms(as_of: datetime | str) -> int:
    if isinstance(as_of, str):
        try:
            as_of = datetime.fromisoformat(as_of)
        except ValueError:
            raise QueryError(
                f"as_of {as_of!r} is neither a snapshot id nor an ISO time "
                "(e.g. 2024-05-01T12:00:00Z)"
            ) from None
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    return int(as_of.timestamp() * 1000)


def _renamed(table: Table) -> bool:
    """True when a field id ever had two names (or a name two ids) in the table's history:
    its data files then cannot be matched by column name."""
    names: dict[int, str] = {}
    ids: dict[str, int] = {}
    for schema in table.schemas().values():
        for field_id, name in index_name_by_id(schema).items():
            if names.setdefault(field_id, name) != name:
                return True
            if ids.setdefault(name, field_id) != field_id:
                return True
    return False


def _plan(table: Table, snapshot: Snapshot) -> _Plan:
    tasks = list(table.scan(snapshot_id=snapshot.snapshot_id).plan_files())
    files = [t.file.file_path for t in tasks]
    return _Plan(
        files=[_local_path(f) for f in files],
        rows=sum(t.file.record_count for t in tasks),
        partitions=len({(t.file.spec_id, t.file.partition) for t in tasks}),
        has_deletes=any(t.delete_files for t in tasks),
    )


def _local_path(uri: str) -> str:
    """A data file's path for Arrow: pyiceberg writes ``file:///x``, Spark's Iceberg ``file:/x``
    (S3 URLs stay as they are)."""
    if uri.startswith("file://"):
        return uri[len("file://") :]
    return uri.removeprefix("file:")


@functools.lru_cache(maxsize=_PLAN_CACHE)
def _references(query: str) -> frozenset[tuple[str, str]]:
    """(schema, name) of every table a query reads, schema ``lake``, ``db`` or "" (bare);
    CTE names excluded. DuckDB alone would need the tables bound first.

    Cached per query text: dashboards and API clients repeat the same few queries, and the
    sqlglot parse is the costliest step of a query over a warm, unchanged lake."""
    try:
        tree = sqlglot.parse_one(query, read="duckdb")
    except sqlglot.errors.ParseError as e:
        raise QueryError(f"SQL syntax error: {str(e).splitlines()[0]}") from None
    ctes = {cte.alias for cte in tree.find_all(exp.CTE)}
    return frozenset(
        (t.db if t.db in ("lake", "db") else "", t.name)
        for t in tree.find_all(exp.Table)
        if t.name and not (not t.db and t.name in ctes)
    )


def referenced_tables(query: str) -> frozenset[str]:
    """The names of the tables a query reads, as written (``lake.t``, ``db.t`` or ``t``)."""
    return frozenset(f"{schema}.{name}" if schema else name for schema, name in _references(query))


def check_select(query: str) -> None:
    """QueryError unless ``query`` is one SELECT; a syntax error names the token and line."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as e:
        lines = str(e).strip().splitlines()
        where = next((ln.strip() for ln in lines[1:] if ln.strip().startswith("LINE")), "")
        first = lines[0] if lines else "invalid SQL"
        first = first.replace("Parser Error: syntax error", "SQL syntax error")
        raise QueryError(f"{first}" + (f" ({where})" if where else "")) from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError("only a single read-only SELECT statement is allowed")


def _snapshot_info(s: Snapshot) -> SnapshotInfo:
    summary = s.summary
    props = summary.additional_properties if summary else {}
    return SnapshotInfo(
        snapshot_id=s.snapshot_id,
        committed_at=datetime.fromtimestamp(s.timestamp_ms / 1000, UTC),
        operation=str(summary.operation.value) if summary else "",
        added_rows=int(props.get("added-records", 0)),
        total_rows=int(props.get("total-records", 0)),
        flow=props.get(checkpoints.WRITER),
    )


def _lake_info(name: str, table: Table, plan: _Plan | None) -> TableInfo:
    snapshot = table.current_snapshot()
    return TableInfo(
        name=name,
        kind="lake",
        columns=[Column(f.name, str(f.field_type), not f.required) for f in table.schema().fields],
        rows=plan.rows if plan else 0,
        files=len(plan.files) if plan else 0,
        partitions=plan.partitions if plan else 0,
        snapshots=len(table.snapshots()),
        last_updated=(
            datetime.fromtimestamp(snapshot.timestamp_ms / 1000, UTC) if snapshot else None
        ),
        partition_spec=", ".join(
            f"{pf.transform}({table.schema().find_column_name(pf.source_id)})"
            for pf in table.spec().fields
        ),
    )


class _Database:
    """The pipeline's operational database, read into Arrow (no DuckDB extension needed)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._cache: dict[str, tuple[object, pa.Table]] = {}
        self._names: tuple[object, list[str]] | None = None

    @property
    def _sqlite_path(self) -> Path | None:
        if self.url.startswith("sqlite:///"):
            return Path(self.url[len("sqlite:///") :])
        return None

    def version(self) -> object:
        path = self._sqlite_path
        if path is None:
            return None  # PostgreSQL: no cheap change marker; read on every bind
        stats = [p.stat() for p in (path, Path(str(path) + "-wal")) if p.exists()]
        return tuple((s.st_mtime_ns, s.st_size) for s in stats)

    def _rows(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        path = self._sqlite_path
        if path is not None:
            if not path.exists():
                return [], []
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                cur = con.execute(sql)
                return [d[0] for d in cur.description], cur.fetchall()
            finally:
                con.close()
        if self.url.startswith(("postgresql://", "postgres://")):
            import psycopg

            with psycopg.connect(self.url) as pg:
                pcur = pg.execute(sql)
                return [d.name for d in pcur.description or []], pcur.fetchall()
        if self.url.startswith(("mysql://", "mariadb://")):
            from tidelake.db import mysql_connect

            my = mysql_connect(self.url)
            try:
                with my.cursor() as mcur:
                    mcur.execute(sql)
                    return [d[0] for d in mcur.description or []], list(mcur.fetchall())
            finally:
                my.close()
        return [], []

    def names(self) -> list[str]:
        version = self.version()
        if version is not None and self._names is not None and self._names[0] == version:
            return list(self._names[1])
        if self._sqlite_path is not None:
            sql = (
                "SELECT name FROM sqlite_master "
                "WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'"
            )
        elif self.url.startswith(("mysql://", "mariadb://")):
            sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
        else:
            sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        names = sorted(str(r[0]) for r in self._rows(sql)[1])
        self._names = (version, names)
        return list(names)

    def read(self, name: str) -> pa.Table:
        version = self.version()
        hit = self._cache.get(name)
        if hit is not None and version is not None and hit[0] == version:
            return hit[1]
        columns, rows = self._rows(f"SELECT * FROM {quote(name)}")
        arrays = []
        for values in zip(*rows, strict=True) if rows else [() for _ in columns]:
            try:
                arrays.append(pa.array(values))
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # SQLite columns may mix types
                text = [None if v is None else str(v) for v in values]
                arrays.append(pa.array(text, pa.string()))
        table = pa.Table.from_arrays(arrays, names=columns)
        self._cache[name] = (version, table)
        return table


class QueryEngine:
    """A DuckDB connection over a pipeline's lake and database tables. Thread-safe."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.warehouse = warehouse(pipeline)
        self.db = _Database(pipeline.url(pipeline.database))
        self._lock = threading.RLock()
        self._plans: dict[tuple[str, int], _Plan] = {}
        self._arrow: dict[str, tuple[int, pa.Table]] = {}
        self._bound: dict[tuple[str, str], object] = {}
        self._results = results.Results()
        self._tables: dict[str, Table] = {}
        self._catalog = open_catalog(pipeline)
        self._namespace = namespace(pipeline)
        self._con = duckdb.connect()
        self._con.execute("CREATE SCHEMA lake; CREATE SCHEMA db; SET TimeZone = 'UTC'")
        # DuckDB opens no file at all (not even a spill directory, which external access
        # would otherwise allow): tables are Arrow objects tidelake registers
        self._con.execute("SET temp_directory = ''")
        self._con.execute("SET enable_external_access = false")
        self._con.execute("SET python_enable_replacements = false")

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> QueryEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- catalog ------------------------------------------------------------------

    def tables(self) -> list[TableInfo]:
        """Every lake table, then every database table."""
        out = [self._lake_info(name) for name in table_names(self.pipeline)]
        for name in self.db.names():
            data = self.db.read(name)
            cols = [Column(f.name, str(f.type)) for f in data.schema]
            out.append(TableInfo(name, "db", cols, data.num_rows))
        return out

    def describe(self, name: str) -> TableDetail:
        """One table: ``lake.t``, ``db.t``, or a bare ``t`` that only one store has."""
        qualified = name.startswith(("lake.", "db."))
        schema, _, bare = name.partition(".") if qualified else ("", "", name)
        in_lake = schema != "db" and bare in table_names(self.pipeline)
        in_db = schema != "lake" and bare in self.db.names()
        if in_lake and in_db:
            raise AmbiguousTable(
                f"table {bare!r} is both a lake table and a database table: "
                f"name it lake.{bare} or db.{bare}"
            )
        return self._describe(bare, in_lake, in_db)

    def _describe(self, name: str, in_lake: bool, in_db: bool) -> TableDetail:
        if in_lake:
            table = load_table(self.pipeline, name)
            entries = {
                key[len(checkpoints.PREFIX) :]: checkpoints.StoredCheckpoint.from_json(v)
                for key, v in checkpoints.carried(table.metadata).items()
            }
            return TableDetail(
                info=self._lake_info(name, table),
                location=table.location(),
                properties=dict(table.properties),
                history=[_snapshot_info(s) for s in table.snapshots()],
                checkpoints={flow: e.positions for flow, e in entries.items()},
            )
        if in_db:
            data = self.db.read(name)
            cols = [Column(f.name, str(f.type)) for f in data.schema]
            return TableDetail(TableInfo(name, "db", cols, data.num_rows))
        raise QueryError(f"no table {name!r} in pipeline {self.pipeline.name!r} ({self._known()})")

    def _lake_info(self, name: str, table: Table | None = None) -> TableInfo:
        table = table or load_table(self.pipeline, name)
        snapshot = table.current_snapshot()
        with self._lock:
            plan = self._plan(name, table, snapshot) if snapshot else None
        return _lake_info(name, table, plan)

    def _known(self) -> str:
        lake = ", ".join(table_names(self.pipeline)) or "none"
        db = ", ".join(self.db.names()) or "none"
        return f"lake tables: {lake}; db tables: {db}"

    # -- SQL ----------------------------------------------------------------------

    def sql(self, query: str, as_of: AsOf = None, params: Sequence[Any] | None = None) -> pa.Table:
        """Run one read-only SELECT; ``as_of`` time-travels the lake tables it reads;
        ``params`` are the values of its ``?``/``$n`` placeholders."""
        check_select(query)
        with self._lock:
            lake = self._lake_pointers()
            versions = self._bind(set(_references(query)), lake, as_of)
            key = None
            if versions is not None and results.repeatable(query):
                key = (query, repr(as_of), repr(params), versions)
                if (kept := self._results.get(key)) is not None:
                    return kept
            try:
                table = self._con.sql(query, params=params).to_arrow_table()
            except duckdb.CatalogException as e:
                raise QueryError(f"{str(e).splitlines()[0]} ({self._known()})") from None
            except duckdb.Error as e:
                raise QueryError(str(e)) from None
            if key is not None:
                self._results.put(key, table)
            return table

    def lake_names(self) -> list[str]:
        """The lake tables that exist now (one catalog query, no metadata read)."""
        with self._lock:
            return sorted(self._lake_pointers())

    def _lake_pointers(self) -> dict[str, str]:
        """Every lake table's current metadata location, in one catalog query.

        ``table_names`` + ``load_table`` per query cost a namespace check, a listing, and a
        metadata-file read and parse per table (~10 ms, growing with the snapshot history);
        metadata files are immutable, so a table is re-read only when its pointer moved.
        """
        return pyiceberg_internals.metadata_locations(self._catalog, self._namespace)

    def _table(self, name: str, location: str | None) -> Table:
        """Lake table ``name``, reloaded only when its metadata location is not ``location``."""
        table = self._tables.get(name)
        if table is None or location is None or table.metadata_location != location:
            table = self._tables[name] = load_table(self.pipeline, name)
        return table

    def _bind(
        self, refs: set[tuple[str, str]], lake: dict[str, str], as_of: AsOf
    ) -> tuple[tuple[str, str, object], ...] | None:
        """Bind every referenced table: ``lake.t``/``db.t`` in their schema, bare ``t`` in
        main as a view of the one store that has it (both: an error naming both). Returns
        the version of each table bound (None: one has no version, see ``results``)."""
        bare = {name for schema, name in refs if not schema}
        wants_db = bare or any(schema == "db" for schema, _ in refs)
        db = set(self.db.names()) if wants_db else set()
        both = sorted(n for n in bare if n in lake and n in db)
        if both:
            raise AmbiguousTable("; ".join(
                f"table {n!r} is both a lake table and a database table: "
                f"write lake.{n} or db.{n}" for n in both))  # fmt: skip
        matched = False
        read: set[str] = set()
        versions: list[tuple[str, str, object]] | None = []
        for schema, name in refs:
            store = schema or ("lake" if name in lake else "db" if name in db else "")
            if store == "lake" and name in lake:
                table = self._table(name, lake[name])
                snapshot = self._resolve(table, as_of)
                if isinstance(as_of, int) and table.snapshot_by_id(as_of) is not None:
                    matched = True
                self._bind_lake(name, table, snapshot)
                read.add(name)
                version: object = lake[name]
            elif store == "db" and name in db:
                version = self.db.version()
                self._bind_arrow("db", name, self.db.read(name))
            else:
                continue  # unknown: DuckDB's catalog error names it (with the known tables)
            if not schema and self._bound.get(("main", name)) != store:
                q = quote(name)
                self._con.execute(f"CREATE OR REPLACE VIEW main.{q} AS SELECT * FROM {store}.{q}")
                self._bound[("main", name)] = store
            if versions is not None:
                versions = None if version is None else [*versions, (store, name, version)]
        if isinstance(as_of, int) and not matched and read:
            raise QueryError(
                f"snapshot {as_of} is not in the history of {', '.join(sorted(read))} "
                "(expired, or from another table; see `tidelake lake describe`)"
            )
        return None if versions is None else tuple(sorted(versions, key=repr))

    @staticmethod
    def _resolve(table: Table, as_of: AsOf) -> Snapshot | None:
        if as_of is None:
            return table.current_snapshot()
        if isinstance(as_of, int):
            return table.snapshot_by_id(as_of) or table.current_snapshot()
        return table.snapshot_as_of_timestamp(_timestamp_ms(as_of))

    def _plan(self, name: str, table: Table, snapshot: Snapshot) -> _Plan:
        key = (name, snapshot.snapshot_id)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _plan(table, snapshot)
            while len(self._plans) > _PLAN_CACHE:
                del self._plans[next(iter(self._plans))]
        return plan

    def _bind_lake(self, name: str, table: Table, snapshot: Snapshot | None) -> None:
        key = (table.metadata_location, snapshot.snapshot_id if snapshot else None)
        if self._bound.get(("lake", name)) == key:
            return
        schema = table.schema()
        if snapshot is not None and snapshot.schema_id is not None:
            schema = table.schemas().get(snapshot.schema_id, schema)
        plan = self._plan(name, table, snapshot) if snapshot else None
        if plan is None or not plan.files:
            data: pa.Table | ds.Dataset = arrow_schema(schema).empty_table()
        elif plan.has_deletes or not self.warehouse.startswith("file://") or _renamed(table):
            assert snapshot is not None  # pyiceberg applies deletes and field ids
            cached = self._arrow.get(name)
            if cached is None or cached[0] != snapshot.snapshot_id:
                scanned = table.scan(snapshot_id=snapshot.snapshot_id).to_arrow()
                cached = self._arrow[name] = (snapshot.snapshot_id, scanned)
            data = cached[1]
        else:  # columns match by name: older files lack added columns (NULL), types widen
            data = ds.dataset(plan.files, schema=arrow_schema(schema), format="parquet")
        self._bind_arrow("lake", name, data)
        self._bound[("lake", name)] = key

    def _bind_arrow(self, schema: str, name: str, data: pa.Table | ds.Dataset) -> None:
        if self._bound.get((schema, name)) is data:
            return  # the same (cached, unchanged) table is bound already
        internal = f"__{schema}_{name}"
        self._con.register(internal, data)
        q = quote(name)
        source = quote(internal)
        self._con.execute(f"CREATE OR REPLACE VIEW {schema}.{q} AS SELECT * FROM {source}")
        self._bound[(schema, name)] = data


def tables(pipeline: Pipeline) -> list[TableInfo]:
    """The pipeline's lake tables (``tidelake lake tables``)."""
    with QueryEngine(pipeline) as engine:
        return [engine._lake_info(name) for name in table_names(pipeline)]


def describe(pipeline: Pipeline, name: str) -> TableDetail:
    """One lake table in detail (``tidelake lake describe NAME``)."""
    with QueryEngine(pipeline) as engine:
        return engine.describe(name if name.startswith("lake.") else f"lake.{name}")


__all__ = [
    "AmbiguousTable",
    "AsOf",
    "Column",
    "check_select",
    "QueryEngine",
    "SnapshotInfo",
    "TableDetail",
    "TableInfo",
    "describe",
    "referenced_tables",
    "tables",
]
