"""Flow status (``/api/flows``), Prometheus ``/metrics``, ``/healthz`` and the middleware that
counts requests per route."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI
from fastapi.responses import PlainTextResponse, Response

from tidelake.runtime.metrics import read_all
from tidelake.serve import prometheus
from tidelake.serve.models import FlowStatus, Problem
from tidelake.serve.state import ApiState

STALE_AFTER = 15.0


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
        worker=str(raw.get("worker", "")),
        partitions={str(k): int(v) for k, v in (raw.get("partitions") or {}).items()},
    )


class RequestMetrics:
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
            route = getattr(scope.get("route"), "path", None)
            self.stats.observe(scope["method"], route, status, time.perf_counter() - started)


def add_routes(api: APIRouter, state: ApiState) -> None:
    """``/flows`` of one app, on its ``/api`` router."""

    @api.get("/flows", response_model=list[FlowStatus], summary="Status of every flow")
    def flows() -> list[FlowStatus]:
        now, state_dir = time.time(), state.pipeline.state_dir
        out = [_flow_status(raw, now) for raw in read_all(state_dir / "metrics")]
        try:  # scheduled flows: their cron, last and next run (written by `tidelake run`;
            # a compaction job is listed as `compact <tables>`)
            jobs = {j["runs"]: j for j in orjson.loads((state_dir / "schedules.json").read_bytes())}
        except (OSError, orjson.JSONDecodeError):
            jobs = {}
        seen = {f.flow for f in out}
        out += [FlowStatus(flow=f, state="scheduled") for f in jobs if f not in seen]
        for f in out:
            if job := jobs.get(f.flow):
                f.schedule, f.cron = job["schedule"], job["cron"]
                f.last_run, f.next_run = job["last_run"], job["next_run"]
                f.last_error = f.last_error or job["last_error"]
        return out


def add_app_routes(app: FastAPI, state: ApiState, auth: list[Any]) -> None:
    """``/metrics`` (behind ``auth``) and ``/healthz`` of one app."""

    @app.get(
        "/metrics",
        dependencies=auth,
        response_class=PlainTextResponse,
        summary="Prometheus metrics: flows and API requests",
        responses={401: {"model": Problem}},
    )
    def metrics() -> Response:
        return Response(state.stats.render(), media_type=prometheus.CONTENT_TYPE)

    state.stats.with_flows(lambda: read_all(state.pipeline.state_dir / "metrics"))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}
