"""What ``tidelake validate`` checks beyond the file's shape, before anything runs.

- every environment variable a transform needs is set (the pseudonymize key, 16 bytes+);
- every part of an ``engine: spark`` flow translates to Spark (its SQL through sqlglot);
- every sql/filter transform binds against the columns its source declares: a generator
  kind's columns, a CSV/JSON file's header, or, for a topic, what the flow writing that
  topic produces (through the log's JSON encoding, with ``_topic/_partition/_offset``);
- every saved query and dashboard panel runs against the tables' current schemas (tables
  that exist) or their declared ones (what the flow landing them produces), and a
  panel's ``x``/``y`` name columns of its result;
- a flow with ``workers: N > 1`` can be split (``runtime.workers.problems``).

SQL runs on empty tables in a scratch DuckDB, so no data is read and an error is one
every row would share. A table whose schema is neither current nor declared (a CDC or
HTTP flow that has not run) is reported as not checked, not as a problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tidelake.config import Pipeline, key_lines

MIN_KEY_BYTES = 16
PROVENANCE = pa.schema([("_topic", pa.string()), ("_partition", pa.int32()),
                        ("_offset", pa.int64())])  # fmt: skip


@dataclass(frozen=True)
class Finding:
    """One problem (``error``) or a note that something could not be checked."""

    location: tuple[Any, ...]
    message: str
    error: bool = True


def _through_log(schema: pa.Schema) -> pa.Schema:
    """The columns a record has after a JSON round trip through a topic: times come back
    as naive UTC timestamps (``formats.times``), decimals as doubles."""

    def back(t: pa.DataType) -> pa.DataType:
        if pa.types.is_timestamp(t):
            return pa.timestamp("us")
        if pa.types.is_decimal(t):
            return pa.float64()
        return t

    return pa.schema([pa.field(f.name, back(f.type)) for f in schema])


def _source_schema(
    source: Any, pipeline: Pipeline, topics: dict[str, pa.Schema]
) -> pa.Schema | None:
    kind = getattr(source, "type", None)
    if kind == "generator":
        from tidelake.sources.generator import generate

        return generate(source.kind, 0, 1, source.seed).schema
    if kind == "file":
        return _file_schema(pipeline.path(source.path))
    if kind == "topic":
        names = [source.topic] if isinstance(getattr(source, "topic", None), str) else []
        known = [topics[t] for t in names if t in topics]
        if not known:
            return None
        return pa.unify_schemas([known[0], PROVENANCE])
    return None


def _file_schema(path: Path) -> pa.Schema | None:
    """A CSV or JSON-lines file's columns as the file source infers them (small files)."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    if not path.is_file() or path.stat().st_size > 16 * 2**20:
        return None
    try:
        if path.suffix.lower() in (".json", ".jsonl", ".ndjson"):
            return pjson.read_json(path).schema
        return pcsv.read_csv(path).schema
    except (pa.ArrowInvalid, OSError):
        return None


def _apply(transform: Any, schema: pa.Schema, con: duckdb.DuckDBPyConnection) -> pa.Schema | None:
    """The columns after one transform (None when its output cannot be derived here);
    raises duckdb.Error when its SQL does not bind to ``schema``."""
    kind = getattr(transform, "type", None)
    if kind in ("validate",):
        return schema
    if kind in ("pseudonymize", "redact"):
        fields = set(transform.fields)
        return pa.schema([pa.field(f.name, pa.string()) if f.name in fields else f for f in schema])
    if kind == "sql":
        query = transform.query
    elif kind == "filter":
        query = f"SELECT * FROM batch WHERE {transform.where}"
    else:
        return None
    con.register("batch", schema.empty_table())
    try:
        return con.sql(query).to_arrow_table().schema
    finally:
        con.unregister("batch")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_flows(
    pipeline: Pipeline,
) -> tuple[list[Finding], dict[str, pa.Schema]]:
    """Env vars and transform SQL; returns the findings and the declared table schemas."""
    findings: list[Finding] = []
    topics: dict[str, pa.Schema] = {}
    tables: dict[str, pa.Schema] = {}
    con = duckdb.connect()
    pending = dict(pipeline.flows)
    for _ in range(len(pending) + 1):  # a flow reading a topic waits for the flow writing it
        progressed = False
        for name, flow in list(pending.items()):
            source = flow.source
            reads = (
                getattr(source, "topic", None) if getattr(source, "type", "") == "topic" else None
            )
            writer_pending = reads is not None and any(
                getattr(f.sink, "topic", None) == reads for n, f in pending.items() if n != name
            )
            if writer_pending:
                continue
            del pending[name]
            progressed = True
            findings += _env(name, flow) + _spark(name, flow)
            schema = _source_schema(source, pipeline, topics)
            for i, t in enumerate(flow.transforms):
                if schema is None:
                    break
                try:
                    schema = _apply(t, schema, con)
                except duckdb.Error as e:
                    key = "query" if getattr(t, "type", "") == "sql" else "where"
                    findings.append(Finding(("flows", name, "transforms", i, key), _first_line(e)))
                    schema = None
            if schema is None:
                continue
            sink: Any = flow.sink
            if getattr(sink, "type", "") == "topic" and "{" not in str(sink.topic):
                topics[str(sink.topic)] = _through_log(schema)
            elif getattr(sink, "type", "") in ("table", "lake"):
                tables[str(sink.table)] = schema
        if not progressed:
            break
    con.close()
    return findings, tables


def _env(name: str, flow: Any) -> list[Finding]:
    out = []
    for i, t in enumerate(flow.transforms):
        var = getattr(t, "key_env", None)
        if isinstance(var, str):
            value = os.environ.get(var, "")
            if len(value.encode()) < MIN_KEY_BYTES:
                state = "is not set" if not value else f"is shorter than {MIN_KEY_BYTES} bytes"
                out.append(Finding(
                    ("flows", name, "transforms", i, "key_env"),
                    f"environment variable {var} {state} (the {t.type} transform needs it: "
                    f"export {var}=$(openssl rand -hex 32))",
                ))  # fmt: skip
    return out


def _spark(name: str, flow: Any) -> list[Finding]:
    """What of an ``engine: spark`` flow does not translate to Spark (tidelake.spark)."""
    if flow.engine != "spark":
        return []
    from tidelake.spark.translate import untranslatable

    return [Finding(("flows", name, *loc), message) for loc, message in untranslatable(flow)]


def _current(pipeline: Pipeline) -> dict[tuple[str, str], pa.Schema]:
    """(store, name) -> schema of every table that exists now (empty when unreachable)."""
    from tidelake.lake import QueryEngine

    out: dict[tuple[str, str], pa.Schema] = {}
    try:
        with QueryEngine(pipeline) as engine:
            for info in engine.tables():
                ref = f"{info.kind}.{info.name}"
                out[(info.kind, info.name)] = engine.sql(f"SELECT * FROM {ref} LIMIT 0").schema
    except Exception:  # noqa: BLE001 - no state yet, or a store that is not running
        return out
    return out


def check_queries(pipeline: Pipeline, declared: dict[str, pa.Schema]) -> list[Finding]:
    """Saved queries and panels against current or declared table schemas."""
    try:
        from tidelake.lake.query import referenced_tables
    except ImportError:  # the query layer is an extra (tidelake[lake]); nothing to run SQL on
        return []

    current = _current(pipeline)
    lake_sinks = {str(getattr(f.sink, "table", "")) for f in pipeline.flows.values()
                  if getattr(f.sink, "type", "") == "lake"}  # fmt: skip
    stores: dict[tuple[str, str], pa.Schema] = dict(current)
    for table, schema in declared.items():
        store = "lake" if table in lake_sinks else "db"
        stores.setdefault((store, table), schema)
    con = duckdb.connect()
    con.execute("CREATE SCHEMA lake; CREATE SCHEMA db; SET TimeZone = 'UTC'")
    names: dict[str, list[str]] = {}
    for i, ((store, table), schema) in enumerate(sorted(stores.items())):
        con.register(f"__t{i}", schema.empty_table())
        con.execute(f'CREATE VIEW {store}."{table}" AS SELECT * FROM "__t{i}"')
        names.setdefault(table, []).append(store)
    for table, where in names.items():
        if len(where) == 1:
            con.execute(f'CREATE VIEW main."{table}" AS SELECT * FROM {where[0]}."{table}"')
    work: list[tuple[tuple[Any, ...], str, Any]] = [
        (("queries", n), sql, None) for n, sql in pipeline.queries.items()
    ] + [(("dashboard", i, "sql"), p.sql, p) for i, p in enumerate(pipeline.dashboard)]
    findings: list[Finding] = []
    for loc, sql, panel in work:
        try:
            refs = referenced_tables(sql)
        except Exception as e:  # noqa: BLE001 - a syntax error is the finding
            findings.append(Finding(loc, _first_line(e)))
            continue
        unknown = sorted(r for r in refs if r.rpartition(".")[2] not in names)
        if unknown:
            findings.append(Finding(loc, f"not checked: {', '.join(unknown)} has no data yet "
                                         "and no declared schema", error=False))  # fmt: skip
            continue
        try:
            result = con.sql(sql).to_arrow_table().schema
        except duckdb.Error as e:
            findings.append(Finding(loc, _first_line(e)))
            continue
        if panel is not None:
            findings += _panel_columns(loc[:2], panel, result)
    con.close()
    return findings


def _panel_columns(loc: tuple[Any, ...], panel: Any, result: pa.Schema) -> list[Finding]:
    ys = [panel.y] if isinstance(panel.y, str) else list(panel.y or [])
    out = []
    for key, names in (("x", [panel.x] if panel.x else []), ("y", ys)):
        missing = [n for n in names if n not in result.names]
        if missing:
            columns = ", ".join(result.names)
            wrong = ", ".join(map(repr, missing))
            message = f"column {wrong} is not in the panel's result (columns: {columns})"
            out.append(Finding(loc + (key,), message))
    return out


def check(pipeline: Pipeline, path: Path) -> list[str]:
    """Every finding as ``file:line: key: message`` (notes prefixed ``note:``), in file order."""
    from tidelake.runtime.workers import problems

    findings, declared = check_flows(pipeline)
    findings += check_queries(pipeline, declared)
    findings += [
        Finding(("flows", name, "workers"), why)
        for name, flow in pipeline.flows.items()
        for why in problems(pipeline, name, flow.workers)
    ]
    lines = key_lines(path.read_text())

    def line(loc: tuple[Any, ...]) -> int:
        while loc and loc not in lines:
            loc = loc[:-1]
        return lines.get(loc, 1)

    out = sorted(findings, key=lambda f: line(f.location))
    return [
        f"{path}:{line(f.location)}: {'.'.join(map(str, f.location))}: "
        f"{'' if f.error else 'note: '}{f.message}"
        for f in out
    ]


__all__ = ["Finding", "check", "check_flows", "check_queries"]
