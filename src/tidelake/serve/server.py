"""``tidelake serve``: run the API with uvicorn (and the pg-wire endpoint), refusing to expose
them without credentials."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping

import uvicorn

from tidelake.config import Pipeline
from tidelake.errors import ConfigError
from tidelake.serve import pgwire
from tidelake.serve.api import create_app
from tidelake.serve.auth import TOKEN_ENV, Credentials, token_from_env
from tidelake.serve.engine import Limits
from tidelake.serve.pgwire import TLS


def is_loopback(host: str) -> bool:
    """True when ``host`` resolves only to loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses
    )


MIN_TOKEN_LENGTH = 16
"""Shortest token accepted beyond loopback (with at least ``MIN_TOKEN_LENGTH // 2`` distinct
characters): ``secrets.token_urlsafe(24)`` gives 32."""


def check_bind(
    host: str, token: str | None, named: Mapping[str, str] | None = None, users: bool = False
) -> None:
    """Refuse a non-loopback bind without credentials (a strong token or a user) or with a
    weak token (``ConfigError`` saying how to fix it)."""
    if is_loopback(host):
        return
    if not token and not named and not users:
        raise ConfigError(
            f"refusing to serve on {host!r} without a token: anyone who can reach it could "
            f"query the lake and write to the log. Set {TOKEN_ENV} (clients then send "
            "'Authorization: Bearer <token>'), add a user (tidelake users add), "
            "or bind to 127.0.0.1."
        )
    for variable, secret in (({TOKEN_ENV: token} if token else {}) | dict(named or {})).items():
        if len(secret) < MIN_TOKEN_LENGTH or len(set(secret)) < MIN_TOKEN_LENGTH // 2:
            raise ConfigError(
                f"refusing to serve on {host!r} with a weak {variable} ({len(secret)} characters, "
                f"{len(set(secret))} distinct): use at least {MIN_TOKEN_LENGTH} random "
                "characters, e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'"
            )


def pg_login(host: str, credentials: Credentials) -> bool:
    """Whether the pg-wire endpoint needs a login (the API's rule: beyond loopback, or when
    the API has a token or users); ``ConfigError`` when it does and there is no user."""
    users = credentials.users.exist()
    if not (users or credentials.tokens or not is_loopback(host)):
        return False
    if not users:
        raise ConfigError(
            f"refusing to serve pg-wire on {host!r} without users: PostgreSQL clients log in "
            "as a user of the pipeline. Add one (tidelake users add PIPELINE NAME), "
            "or bind to 127.0.0.1 without an API token."
        )
    return True


def serve(
    pipeline: Pipeline,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    limits: Limits | None = None,
    pg_port: int | None = None,
    pg_tls: TLS | None = None,
) -> None:
    """Serve ``pipeline``'s API until interrupted (``tidelake serve PIPELINE --host --port``),
    and with ``pg_port`` the PostgreSQL wire endpoint on the same host.

    ``token`` defaults to ``TIDELAKE_API_TOKEN``.
    """
    token = token or token_from_env()
    credentials = Credentials(pipeline, token)
    check_bind(host, token, credentials.named, users=credentials.users.exist())
    app = create_app(pipeline, token=token, limits=limits, secure_cookies=not is_loopback(host))
    pg = None
    if pg_port is not None:
        pg = pgwire.start(pipeline, host, pg_port, pg_login(host, credentials), limits, pg_tls)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    finally:
        if pg is not None:
            pg.stop()


__all__ = ["MIN_TOKEN_LENGTH", "check_bind", "is_loopback", "pg_login", "serve"]
