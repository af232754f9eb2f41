"""Who calls the API, and which topics they may ingest into.

Credentials, each compared in constant time and never logged or echoed:

- the API token (``create_app(token=...)``; ``TIDELAKE_API_TOKEN`` for the CLI), sent as
  ``Authorization: Bearer <token>``: the server's ingest scope (``serve: {ingest}``);
- named tokens, ``serve: {tokens: {NAME: {ingest: [...]}}}`` in the pipeline file, whose
  secret is the environment variable ``TIDELAKE_API_TOKEN_<NAME>``: only their own topics;
- the pipeline's users (``tidelake users add``), sent as HTTP Basic: a viewer may not
  ingest, an operator or admin has the server's ingest scope.

With no token and no user, the API is open (it then binds to loopback only). CDC and
dead-letter topics are never in a scope unless the scope names them exactly.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fastapi import HTTPException, Request, status

from tidelake.config import Pipeline
from tidelake.serve.ingest import Routes
from tidelake.serve.users import Users

TOKEN_ENV = "TIDELAKE_API_TOKEN"


def token_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """``TIDELAKE_API_TOKEN`` if set and non-empty."""
    env = os.environ if env is None else env
    return env.get(TOKEN_ENV) or None


def token_env(name: str) -> str:
    """The environment variable holding named token ``name``'s secret."""
    return f"{TOKEN_ENV}_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}"


@dataclass(frozen=True)
class Principal:
    """The caller of one request: ``name`` for errors and audit, ``ingest`` its write scope
    (None: it may not ingest)."""

    name: str
    role: str
    ingest: Routes | None


class Credentials:
    """Every credential one app accepts."""

    def __init__(
        self, pipeline: Pipeline, token: str | None, env: Mapping[str, str] | None = None
    ) -> None:
        env = os.environ if env is None else env
        self.server_scope = Routes(pipeline)
        self.tokens: list[tuple[bytes, Principal]] = []
        self.named: dict[str, str] = {}
        """Named tokens' secrets by environment variable (``check_bind`` checks strength)."""
        if token:
            self.tokens.append((token.encode(), Principal("token", "admin", self.server_scope)))
        for name, settings in pipeline.serve.tokens.items():
            secret = env.get(token_env(name))
            if secret:
                self.named[token_env(name)] = secret
                scope = Routes(pipeline, settings.ingest)
                self.tokens.append((secret.encode(), Principal(f"token {name}", "operator", scope)))
        self.users = Users(pipeline)

    def identify(self, authorization: str) -> Principal | None:
        """The caller an ``Authorization`` header names; None when it names nobody."""
        scheme, _, given = authorization.partition(" ")
        scheme, given = scheme.lower(), given.strip()
        if scheme == "bearer":
            match = None
            for secret, principal in self.tokens:  # every token compared: no early exit
                if hmac.compare_digest(given.encode(), secret):
                    match = principal
            return match
        if scheme == "basic":
            try:
                name, _, password = base64.b64decode(given, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            user = self.users.authenticate(name, password)
            if user is None:
                return None
            scope = self.server_scope if user.role in ("operator", "admin") else None
            return Principal(f"user {user.name}", user.role, scope)
        return None

    def guard(self) -> Callable[[Request], None]:
        """A FastAPI dependency: sets ``request.state.principal`` or answers 401."""
        anonymous = Principal("anonymous", "admin", self.server_scope)

        def require_credentials(request: Request) -> None:
            if not self.tokens and not self.users.exist():
                request.state.principal = anonymous
                return
            principal = self.identify(request.headers.get("authorization", ""))
            if principal is None:
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED,
                    "missing or wrong credentials (send 'Authorization: Bearer <token>', "
                    "or a user's name and password as HTTP Basic)",
                    headers={"WWW-Authenticate": 'Bearer, Basic realm="tidelake"'},
                )
            request.state.principal = principal

        return require_credentials


__all__ = ["TOKEN_ENV", "Credentials", "Principal", "token_env", "token_from_env"]
