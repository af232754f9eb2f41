"""``/api/query`` and ``/api/queries``: one read-only SELECT, or a saved query by name.

User SQL is checked by ``sql_guard`` before and after it is wrapped in the row limit."""

from __future__ import annotations

import time
from typing import Annotated

import duckdb
from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response

from tidelake.serve import sql_guard
from tidelake.serve.models import QueryRequest, QueryResult, SavedQuery
from tidelake.serve.responses import rows_response
from tidelake.serve.state import ApiState


def _strip_terminator(sql: str) -> str:
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


def add_routes(api: APIRouter, state: ApiState) -> None:
    """The SQL routes of one app, on its ``/api`` router."""

    def run_sql(sql: str, limit: int | None, as_of: int | str | None) -> Response:
        started = time.perf_counter()
        if limit is not None and limit > state.limits.max_rows:
            raise HTTPException(422, f"limit: at most {state.limits.max_rows} rows per query")
        cap = limit or state.limits.max_rows
        catalog = state.pool.catalog()
        sql_guard.check(sql, catalog)
        wrapped = f"SELECT * FROM (\n{_strip_terminator(sql)}\n) AS tidelake_query LIMIT {cap + 1}"
        sql_guard.check(wrapped, catalog)
        return rows_response(state.pool.query(wrapped, as_of=as_of), cap, started)

    @api.post("/query", response_model=QueryResult, summary="Run one read-only SELECT")
    def query(request: QueryRequest) -> Response:
        return run_sql(request.sql, request.limit, request.as_of)

    @api.get("/queries", response_model=list[SavedQuery], summary="The pipeline's saved queries")
    def list_queries() -> list[SavedQuery]:
        return [SavedQuery(name=n, sql=s) for n, s in state.pipeline.queries.items()]

    @api.get("/queries/{name}", response_model=QueryResult, summary="Run a saved query")
    def run_query(
        name: Annotated[str, Path(max_length=256)],
        limit: int | None = Query(None, ge=1, le=state.limits.max_rows),
    ) -> Response:
        sql = state.pipeline.queries.get(name)
        if sql is None:
            known = ", ".join(sorted(state.pipeline.queries)) or "none"
            raise HTTPException(404, f"no saved query {name!r} (saved queries: {known})")
        return run_sql(sql, limit, None)
