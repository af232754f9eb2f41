"""Request bodies bounded on every route, and validation errors that never echo them.

``BodyLimit`` is pure ASGI middleware: a declared ``Content-Length`` above the
route's limit is refused before the body is read, and a streamed body is counted
as it arrives, so no route buffers more than its limit. Ingest routes may take
``max_body`` bytes; every other route ``MAX_OTHER_BODY`` (a query is at most
100,000 characters).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

MAX_OTHER_BODY = 1 << 20
_INGEST = "/api/ingest/"

Message = MutableMapping[str, Any]


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Answers 413 for bodies above the route's limit, declared or streamed."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(
        self, scope: Message, receive: Callable[[], Awaitable[Message]], send: Any
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        limit = self.max_body if path.startswith(_INGEST) else MAX_OTHER_BODY
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                await _refuse(send, limit)
                return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await _refuse(send, limit)


async def _refuse(send: Any, limit: int) -> None:
    body = orjson.dumps({"detail": f"body larger than {limit} bytes: send smaller requests"})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def validation_error(_: Request, e: Exception) -> JSONResponse:
    """422 naming the first problems by field; the offending input is never echoed."""
    errors = e.errors() if isinstance(e, RequestValidationError) else []
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}"[:200])
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


__all__ = ["MAX_OTHER_BODY", "BodyLimit", "validation_error"]
