"""``/api/tables``: the catalog of lake and database tables, and their rows filtered and
ordered without SQL (values are ``?`` parameters; identifiers are quoted only after they
matched the table's schema)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError

from tidelake.errors import QueryError
from tidelake.identifiers import quote
from tidelake.lake.query import AmbiguousTable, TableDetail, TableInfo
from tidelake.serve.models import (
    ColumnInfo,
    Filter,
    QueryResult,
    SnapshotSummary,
    TableDetailOut,
    TableSummary,
)
from tidelake.serve.responses import rows_response
from tidelake.serve.state import ApiState

HISTORY = 50
INTERNAL_PREFIX = "_tidelake_"  # tidelake's own bookkeeping tables (CDC, checkpoints)
_FILTERS = TypeAdapter(list[Filter])


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
        out.append(f"{quote(name)} {'DESC' if desc else 'ASC'}")
    return out


def _condition(f: Filter, params: list[Any]) -> str:
    column = quote(f.column)
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


def add_routes(api: APIRouter, state: ApiState) -> None:
    """The table routes of one app, on its ``/api`` router."""

    @api.get("/tables", response_model=list[TableSummary], summary="Every lake and db table")
    def list_tables() -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        tables = state.pool.call(lambda e: e.tables())
        return [_summary(t, now) for t in tables if not t.name.startswith(INTERNAL_PREFIX)]

    def describe(name: str) -> TableDetail:
        try:
            return state.pool.call(lambda e: e.describe(name))
        except AmbiguousTable as e:
            raise HTTPException(409, str(e)) from e
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
        limit: int = Query(100, ge=1, le=state.limits.max_rows),
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
        info = describe(name).info
        columns = {c.name for c in info.columns}
        for f in filters:
            if f.column not in columns:
                raise HTTPException(422, f"where: unknown column {f.column!r}")
        order = _order(order_by, columns)
        params: list[Any] = []
        table = f"{info.kind}.{quote(info.name)}"  # the store describe() resolved
        sql = f"SELECT * FROM {table}"
        if filters:
            sql += " WHERE " + " AND ".join(_condition(f, params) for f in filters)
        if order:
            sql += " ORDER BY " + ", ".join(order)
        sql += " LIMIT ? OFFSET ?"
        params += [limit + 1, offset]
        return rows_response(state.pool.query(sql, params=params, bind=table), limit, started)
