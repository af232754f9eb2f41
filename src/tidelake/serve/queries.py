"""``/api/query`` and ``/api/queries``: one read-only SELECT, or a saved query by name.

User SQL goes through ``EnginePool.select``: the guard, the row limit, a worker."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response

from tidelake.serve.models import QueryRequest, QueryResult, SavedQuery
from tidelake.serve.responses import rows_response
from tidelake.serve.state import ApiState


def add_routes(api: APIRouter, state: ApiState) -> None:
    """The SQL routes of one app, on its ``/api`` router."""

    def run_sql(sql: str, limit: int | None, as_of: int | str | None) -> Response:
        started = time.perf_counter()
        if limit is not None and limit > state.limits.max_rows:
            raise HTTPException(422, f"limit: at most {state.limits.max_rows} rows per query")
        cap = limit or state.limits.max_rows
        return rows_response(state.pool.select(sql, cap + 1, as_of=as_of), cap, started)

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
