"""``POST /api/ingest/{topic}``: JSON or NDJSON bodies checked by ``serve.ingest`` and appended
to a topic of the pipeline's log; bodies beyond the limit are refused with 413 unread.

Requests in flight hold at most ``Limits.ingests * max_body`` bytes of bodies: each reserves
its declared ``Content-Length`` (``max_body`` when it declares none) before its body is read,
and one that would pass the budget is a 503. Appends go through the state's group-committing
writer, so concurrent requests share log transactions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from starlette.concurrency import run_in_threadpool

from tidelake.serve import ingest
from tidelake.serve.auth import Principal
from tidelake.serve.models import IngestResult
from tidelake.serve.state import ApiState


def add_routes(api: APIRouter, state: ApiState) -> None:
    """The ingest route of one app, on its ``/api`` router."""
    budget = state.limits.ingests * state.max_body
    in_flight = [0]  # bytes reserved by requests being read, checked or produced (event loop's)

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
        principal: Principal = request.state.principal
        if principal.ingest is None:
            raise HTTPException(
                403, f"{principal.name} ({principal.role}) may not ingest: it needs role operator"
            )
        refused = principal.ingest.check(topic)
        if refused is not None:
            raise HTTPException(*refused)
        declared = request.headers.get("content-length", "")
        size = min(int(declared), state.max_body) if declared.isdigit() else state.max_body
        if in_flight[0] + size > budget:  # checked before the body is read
            raise HTTPException(
                503,
                f"ingest requests in flight hold {in_flight[0]:,} of {budget:,} bytes; "
                "retry in a moment",
                headers={"Retry-After": "1"},
            )
        in_flight[0] += size
        try:
            body = await _read_body(request, state.max_body)
            ctype = request.headers.get("content-type", "application/json")
            try:
                values = await run_in_threadpool(ingest.records, body, ctype)
            except ingest.BadPayload as e:
                raise HTTPException(400, str(e)) from None
            if values:
                await state.append(topic, values)
        finally:
            in_flight[0] -= size
        return IngestResult(topic=topic, accepted=len(values))


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
