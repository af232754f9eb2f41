"""Bearer-token auth for the API: one shared token, compared in constant time.

The token comes from the caller (``create_app(token=...)``); ``token_from_env``
reads ``TIDELAKE_API_TOKEN`` for the CLI. The token is never logged or echoed.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping

from fastapi import HTTPException, Request, status

TOKEN_ENV = "TIDELAKE_API_TOKEN"


def token_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """``TIDELAKE_API_TOKEN`` if set and non-empty."""
    env = os.environ if env is None else env
    return env.get(TOKEN_ENV) or None


def bearer_guard(token: str | None) -> Callable[[Request], None]:
    """A FastAPI dependency refusing requests without ``Authorization: Bearer <token>``."""
    expected = token.encode() if token else None

    def require_token(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_token


__all__ = ["TOKEN_ENV", "bearer_guard", "token_from_env"]
