"""The HTTP API over a pipeline: catalog, structured rows, read-only SQL, ingest, status.

Every table read goes through the one query layer (``tidelake.lake.QueryEngine``),
run by sandboxed, pooled engines (``tidelake.serve.engine``). User SQL is
checked by ``tidelake.serve.sql_guard`` first; structured row queries never
paste values into SQL (values are DuckDB ``?`` parameters, identifiers are
quoted only after they matched the table's schema).

The routes live in one module each (``tables``, ``queries``, ``ingest_route``, ``status``);
this module assembles them with the error handlers, auth and request metrics.

Error bodies are ``{"detail": "<what to change>"}``: no stack traces, no paths.
Status codes: 400 refused SQL or payload, 401 missing token, 404 unknown
table/query, 408 query time limit, 413 body or result too large, 422 invalid request or
query error, 503 every engine busy.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from tidelake.config import Pipeline
from tidelake.errors import ConnectorError, TidelakeError
from tidelake.serve import (
    bodies,
    forms_route,
    ingest_route,
    prometheus,
    queries,
    sql_guard,
    status,
    tables,
)
from tidelake.serve.auth import Credentials
from tidelake.serve.engine import (
    EngineBusy,
    EnginePool,
    Limits,
    QueryTimeout,
    ResultTooLarge,
    sanitize,
)
from tidelake.serve.models import Problem
from tidelake.serve.state import ApiState

log = logging.getLogger(__name__)

MAX_BODY = 16 * 2**20
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem} for code in (400, 401, 404, 408, 413, 422, 503)
}


def create_app(
    pipeline: Pipeline,
    token: str | None = None,
    limits: Limits | None = None,
    max_body: int = MAX_BODY,
    secure_cookies: bool = False,
) -> FastAPI:
    """The API for ``pipeline``; with ``token``, named tokens or users, /api and /metrics need
    credentials (``tidelake.serve.auth``). With ``forms:``, /forms serves them to logged-in
    users (``forms_route``), with HTTPS-only cookies when ``secure_cookies``."""
    limits = limits or Limits()
    state = ApiState(
        pipeline, EnginePool(pipeline, limits), limits, max_body, prometheus.RequestStats()
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.pool.warm()
        yield
        state.close()

    app = FastAPIOffline(  # /docs and /redoc serve Swagger UI and ReDoc from the package
        title=f"tidelake: {pipeline.name}",
        description="Catalog, structured rows and read-only SQL over the pipeline's tables, "
        "ingest into its log, flow status and metrics.",
        version="1",
        lifespan=lifespan,
    )
    app.state.tidelake = state
    app.router.redirect_slashes = False  # the redirect would reflect the Host header
    app.add_exception_handler(RequestValidationError, bodies.validation_error)
    auth = [Depends(Credentials(pipeline, token).guard())]

    @app.exception_handler(sql_guard.SQLRefused)
    async def _refused(_: Request, e: sql_guard.SQLRefused) -> JSONResponse:
        return JSONResponse({"detail": sanitize(str(e))}, status_code=400)

    @app.exception_handler(QueryTimeout)
    async def _timeout(_: Request, e: QueryTimeout) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=408)

    @app.exception_handler(ResultTooLarge)
    async def _too_large(_: Request, e: ResultTooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=413)

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

    api = APIRouter(prefix="/api", dependencies=auth, responses=_ERRORS)
    for module in (tables, queries, ingest_route, status):
        module.add_routes(api, state)
    app.include_router(api)
    status.add_app_routes(app, state, auth)
    if pipeline.forms:
        forms_route.add_routes(app, state, secure_cookies)
    app.add_middleware(bodies.BodyLimit, max_body=max_body)
    app.add_middleware(status.RequestMetrics, stats=state.stats)
    return app


__all__ = ["MAX_BODY", "create_app"]
