"""``POST /api/ingest/{topic}``: JSON or NDJSON bodies checked by ``serve.ingest`` and appended
to a topic of the pipeline's log; bodies beyond the limit are refused with 413 unread."""

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
    in_flight = [0]  # requests being read, checked or produced (the event loop's own count)

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
        if in_flight[0] >= state.limits.ingests:  # checked before the body is read
            raise HTTPException(
                503,
                f"{state.limits.ingests} ingest requests are in flight; retry in a moment",
                headers={"Retry-After": "1"},
            )
        in_flight[0] += 1
        try:
            body = await _read_body(request, state.max_body)
            ctype = request.headers.get("content-type", "application/json")
            try:
                values = await run_in_threadpool(ingest.records, body, ctype)
            except ingest.BadPayload as e:
                raise HTTPException(400, str(e)) from None
            if values:
                await run_in_threadpool(state.produce, topic, values)
        finally:
            in_flight[0] -= 1
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
