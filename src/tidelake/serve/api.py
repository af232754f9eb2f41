"""The HTTP API over a pipeline: catalog, structured rows, read-only SQL, ingest, status.

Every table read goes through the one query layer (``tidelake.lake.QueryEngine``),
run by sandboxed, pooled engines (``tidelake.serve.engine``). User SQL is
checked by ``tidelake.serve.sql_guard`` first; structured row queries never
paste values into SQL (values are DuckDB ``?`` parameters, identifiers are
quoted only after they matched the table's schema).

Error bodies are ``{"detail": "<what to change>"}``: no stack traces, no paths.
Status codes: 400 refused SQL or payload, 401 missing token, 404 unknown
table/query, 408 query time limit, 413 body too large, 422 invalid request or
query error, 503 every engine busy.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import duckdb
import orjson
import pyarrow as pa
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from tidelake.broker import Broker, Producer, connect
from tidelake.config import Pipeline
from tidelake.errors import ConnectorError, QueryError, TidelakeError
from tidelake.lake.query import TableDetail, TableInfo
from tidelake.runtime.metrics import read_all
from tidelake.serve import ingest, prometheus, sql_guard
from tidelake.serve.auth import bearer_guard
from tidelake.serve.engine import EngineBusy, EnginePool, Limits, QueryTimeout, sanitize
from tidelake.serve.models import (
    ColumnInfo,
    Filter,
    FlowStatus,
    IngestResult,
    Problem,
    QueryRequest,
    QueryResult,
    SavedQuery,
    SnapshotSummary,
    TableDetailOut,
    TableSummary,
)

log = logging.getLogger(__name__)

MAX_BODY = 16 * 2**20
STALE_AFTER = 15.0
HISTORY = 50
_FILTERS = TypeAdapter(list[Filter])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem} for code in (400, 401, 404, 408, 413, 422, 503)
}


@dataclass
class _State:
    pipeline: Pipeline
    pool: EnginePool
    limits: Limits
    max_body: int
    stats: prometheus.RequestStats
    _broker: Broker | None = None
    _producer: Producer | None = None
    _produce_lock: threading.Lock = field(default_factory=threading.Lock)

    def produce(self, topic: str, values: list[bytes]) -> None:
        with self._produce_lock:
            if self._producer is None:
                self._broker = connect(self.pipeline.url(self.pipeline.broker))
                self._producer = self._broker.producer()
            self._producer.produce(topic, values)
            self._producer.flush()

    def close(self) -> None:
        self.pool.close()
        if self._producer is not None:
            self._producer.close()
        if self._broker is not None:
            self._broker.close()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _json(payload: Any, status: int = 200) -> Response:
    body = orjson.dumps(payload, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    return Response(body, status_code=status, media_type="application/json")


def _result(table: pa.Table, limit: int, started: float) -> Response:
    truncated = table.num_rows > limit
    if truncated:
        table = table.slice(0, limit)
    columns = [c.to_pylist() for c in table.columns]
    rows = [list(r) for r in zip(*columns, strict=True)] if columns else []
    payload = {
        "columns": [
            {"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in table.schema
        ],
        "rows": rows,
        "row_count": len(rows),
        "truncated": truncated,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    try:
        return _json(payload)
    except orjson.JSONEncodeError:  # integers beyond 64 bits (HUGEINT) become strings
        payload["rows"] = [[_wide(v) for v in row] for row in rows]
        return _json(payload)


def _wide(value: Any) -> Any:
    return str(value) if isinstance(value, int) and abs(value) >= 2**63 else value


def _summary(info: TableInfo, now: datetime) -> dict[str, Any]:
    return {
        "name": info.name,
        "kind": info.kind,
        "columns": [
            ColumnInfo(name=c.name, type=c.type, nullable=c.nullable) for c in info.columns
        ],
        "rows": info.rows,
        "files": info.files,
        "partitions": info.partitions,
        "snapshots": info.snapshots,
        "partition_spec": info.partition_spec,
        "last_updated": info.last_updated,
        "freshness_seconds": (
            round((now - info.last_updated).total_seconds(), 3) if info.last_updated else None
        ),
    }


def _detail(d: TableDetail, now: datetime) -> TableDetailOut:
    history = [
        SnapshotSummary(
            snapshot_id=s.snapshot_id,
            committed_at=s.committed_at,
            operation=s.operation,
            added_rows=s.added_rows,
            total_rows=s.total_rows,
            flow=s.flow,
        )
        for s in reversed(d.history[-HISTORY:])
    ]
    return TableDetailOut(
        **_summary(d.info, now),
        properties=dict(d.properties),
        history=history,
        checkpoints={flow: dict(pos) for flow, pos in d.checkpoints.items()},
    )


def _flow_status(raw: dict[str, Any], now: float) -> FlowStatus:
    def num(key: str) -> float:
        try:
            return float(raw.get(key) or 0)
        except (TypeError, ValueError):
            return 0.0

    started, updated, last_cp = num("started"), num("updated"), num("last_checkpoint")
    running = str(raw.get("state", "")) not in ("stopped", "finished", "failed")
    updated_age = max(now - updated, 0.0) if updated else None
    elapsed = (updated or now) - started
    return FlowStatus(
        flow=str(raw.get("flow", "")),
        state=str(raw.get("state", "unknown")),
        records_in=int(num("records_in")),
        records_out=int(num("records_out")),
        bytes_in=int(num("bytes_in")),
        batches=int(num("batches")),
        errors=int(num("errors")),
        dead_letters=int(num("dead_letters")),
        lag=int(num("lag")),
        rate_out=round(num("records_out") / elapsed, 3) if started and elapsed > 0 else 0.0,
        last_batch_seconds=num("last_batch_seconds"),
        last_checkpoint_age_seconds=round(max(now - last_cp, 0.0), 3) if last_cp else None,
        last_error=str(raw.get("last_error", ""))[:500],
        updated_age_seconds=round(updated_age, 3) if updated_age is not None else None,
        stale=running and updated_age is not None and updated_age > STALE_AFTER,
    )


def _parse_filters(where: list[str]) -> list[Filter]:
    items: list[Any] = []
    for raw in where:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise HTTPException(
                422, 'where: not JSON (use [{"column": "c", "op": "=", "value": 1}])'
            ) from None
        items.extend(doc if isinstance(doc, list) else [doc])
    try:
        return _FILTERS.validate_python(items)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise HTTPException(422, f"where[{loc}]: {first['msg']}") from None


def _order(order_by: list[str], columns: set[str]) -> list[str]:
    out = []
    for item in (p.strip() for raw in order_by for p in raw.split(",")):
        if not item:
            continue
        name, desc = item, False
        if name.startswith("-"):
            name, desc = name[1:], True
        elif name.lower().endswith((":desc", ":asc")):
            name, _, direction = name.rpartition(":")
            desc = direction.lower() == "desc"
        if name not in columns:
            raise HTTPException(422, f"order_by: unknown column {name!r}")
        out.append(f"{_quote(name)} {'DESC' if desc else 'ASC'}")
    return out


def _condition(f: Filter, params: list[Any]) -> str:
    column = _quote(f.column)
    if f.op == "is_null":
        return f"{column} IS NULL"
    if f.op == "not_null":
        return f"{column} IS NOT NULL"
    if f.op == "in":
        assert isinstance(f.value, list)
        params.extend(f.value)
        return f"{column} IN ({', '.join('?' for _ in f.value)})"
    params.append(f.value)
    return f"{column} {'LIKE' if f.op == 'like' else f.op} ?"


def _strip_terminator(sql: str) -> str:
    """The statement without a trailing ``;`` (comments and strings are respected)."""
    try:
        tokens = duckdb.tokenize(sql)
    except duckdb.Error:
        return sql
    code = [(pos, kind) for pos, kind in tokens if kind != duckdb.token_type.comment]
    while code and code[-1][1] == duckdb.token_type.operator and sql[code[-1][0]] == ";":
        sql = sql[: code[-1][0]]
        code.pop()
    return sql


class _RequestMetrics:
    """Pure ASGI middleware counting requests and latency per route template."""

    def __init__(self, app: Callable[..., Awaitable[None]], stats: prometheus.RequestStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Any, send: Callable[..., Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            self.stats.observe(scope["method"], route, status, time.perf_counter() - started)


def create_app(
    pipeline: Pipeline,
    token: str | None = None,
    limits: Limits | None = None,
    max_body: int = MAX_BODY,
) -> FastAPI:
    """The API for ``pipeline``; with ``token``, /api and /metrics need ``Bearer <token>``."""
    limits = limits or Limits()
    state = _State(
        pipeline, EnginePool(pipeline, limits), limits, max_body, prometheus.RequestStats()
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(
        title=f"tidelake: {pipeline.name}",
        description="Catalog, structured rows and read-only SQL over the pipeline's tables, "
        "ingest into its log, flow status and metrics.",
        version="1",
        lifespan=lifespan,
    )
    app.state.tidelake = state
    routes = ingest.Routes(pipeline)
    auth = [Depends(bearer_guard(token))]
    api = APIRouter(prefix="/api", dependencies=auth, responses=_ERRORS)

    @app.exception_handler(sql_guard.SQLRefused)
    async def _refused(_: Request, e: sql_guard.SQLRefused) -> JSONResponse:
        return JSONResponse({"detail": sanitize(str(e))}, status_code=400)

    @app.exception_handler(QueryTimeout)
    async def _timeout(_: Request, e: QueryTimeout) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=408)

    @app.exception_handler(EngineBusy)
    async def _busy(_: Request, e: EngineBusy) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(ConnectorError)
    async def _unavailable(_: Request, e: ConnectorError) -> JSONResponse:
        return JSONResponse({"detail": sanitize(str(e))}, status_code=503)

    @app.exception_handler(TidelakeError)
    async def _query_error(_: Request, e: TidelakeError) -> JSONResponse:
        return JSONResponse({"detail": sanitize(str(e))}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error (see the server log)"}, status_code=500)

    def run_sql(sql: str, limit: int | None, as_of: int | str | None) -> Response:
        started = time.perf_counter()
        cap = min(limit or limits.max_rows, limits.max_rows)
        catalog = state.pool.catalog()
        sql_guard.check(sql, catalog)
        wrapped = f"SELECT * FROM (\n{_strip_terminator(sql)}\n) AS tidelake_query LIMIT {cap + 1}"
        sql_guard.check(wrapped, catalog)
        return _result(state.pool.query(wrapped, as_of=as_of), cap, started)

    @api.get("/tables", response_model=list[TableSummary], summary="Every lake and db table")
    def list_tables() -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        return [_summary(t, now) for t in state.pool.call(lambda e: e.tables())]

    def describe(name: str) -> TableDetail:
        try:
            return state.pool.call(lambda e: e.describe(name))
        except QueryError as e:
            raise HTTPException(404, f"unknown table {name!r} (GET /api/tables lists them)") from e

    @api.get("/tables/{name}", response_model=TableDetailOut, summary="One table in detail")
    def get_table(name: Annotated[str, Path(max_length=256)]) -> TableDetailOut:
        return _detail(describe(name), datetime.now(UTC))

    @api.get(
        "/tables/{name}/rows",
        response_model=QueryResult,
        summary="Rows of a table, filtered and ordered without writing SQL",
    )
    def table_rows(
        name: Annotated[str, Path(max_length=256)],
        limit: int = Query(100, ge=1, le=limits.max_rows),
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
        order_by: Annotated[
            list[str], Query(description="columns, '-col' or 'col:desc' for descending")
        ] = [],  # noqa: B006 - FastAPI copies defaults per request
        where: Annotated[
            list[str],
            Query(
                description='JSON list (or repeated objects) of {"column", "op", "value"}; op in '
                "= != < <= > >= in like is_null not_null"
            ),
        ] = [],  # noqa: B006
    ) -> Response:
        started = time.perf_counter()
        filters = _parse_filters(where)
        columns = {c.name for c in describe(name).info.columns}
        for f in filters:
            if f.column not in columns:
                raise HTTPException(422, f"where: unknown column {f.column!r}")
        order = _order(order_by, columns)
        params: list[Any] = []
        sql = f"SELECT * FROM {_quote(name)}"
        if filters:
            sql += " WHERE " + " AND ".join(_condition(f, params) for f in filters)
        if order:
            sql += " ORDER BY " + ", ".join(order)
        sql += " LIMIT ? OFFSET ?"
        params += [limit + 1, offset]
        table = state.pool.query(sql, params=params, bind=_quote(name))
        return _result(table, limit, started)

    @api.post("/query", response_model=QueryResult, summary="Run one read-only SELECT")
    def query(request: QueryRequest) -> Response:
        return run_sql(request.sql, request.limit, request.as_of)

    @api.get("/queries", response_model=list[SavedQuery], summary="The pipeline's saved queries")
    def list_queries() -> list[SavedQuery]:
        return [SavedQuery(name=n, sql=s) for n, s in pipeline.queries.items()]

    @api.get("/queries/{name}", response_model=QueryResult, summary="Run a saved query")
    def run_query(
        name: Annotated[str, Path(max_length=256)],
        limit: int | None = Query(None, ge=1, le=limits.max_rows),
    ) -> Response:
        sql = pipeline.queries.get(name)
        if sql is None:
            known = ", ".join(sorted(pipeline.queries)) or "none"
            raise HTTPException(404, f"no saved query {name!r} (saved queries: {known})")
        return run_sql(sql, limit, None)

    @api.post(
        "/ingest/{topic}",
        response_model=IngestResult,
        summary="Append JSON records to a topic of the pipeline's log",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"type": "object"},
                                {"type": "array", "items": {"type": "object"}},
                            ]
                        }
                    },
                    "application/x-ndjson": {"schema": {"type": "string"}},
                },
            }
        },
    )
    async def ingest_records(
        topic: Annotated[str, Path(max_length=249)], request: Request
    ) -> IngestResult:
        if not ingest.valid_topic(topic):
            raise HTTPException(
                422, "topic names use letters, digits, '.', '_' or '-' (at most 249, not '__...')"
            )
        refused = routes.check(topic)
        if refused is not None:
            raise HTTPException(*refused)
        body = await _read_body(request, state.max_body)
        try:
            values = ingest.records(body, request.headers.get("content-type", "application/json"))
        except ingest.BadPayload as e:
            raise HTTPException(400, str(e)) from None
        if values:
            await run_in_threadpool(state.produce, topic, values)
        return IngestResult(topic=topic, accepted=len(values))

    @api.get("/flows", response_model=list[FlowStatus], summary="Status of every flow")
    def flows() -> list[FlowStatus]:
        now = time.time()
        return [_flow_status(raw, now) for raw in read_all(pipeline.state_dir / "metrics")]

    @app.get(
        "/metrics",
        dependencies=auth,
        response_class=PlainTextResponse,
        summary="Prometheus metrics: flows and API requests",
        responses={401: {"model": Problem}},
    )
    def metrics() -> PlainTextResponse:
        text = prometheus.render(read_all(pipeline.state_dir / "metrics"), state.stats)
        return PlainTextResponse(text, media_type=prometheus.CONTENT_TYPE)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(api)
    app.add_middleware(_RequestMetrics, stats=state.stats)
    return app


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body larger than {limit} bytes: send smaller batches")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body larger than {limit} bytes: send smaller batches")
        chunks.append(chunk)
    return b"".join(chunks)


__all__ = ["MAX_BODY", "create_app"]
