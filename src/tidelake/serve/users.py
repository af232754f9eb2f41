"""Accounts of one pipeline: names, roles and scrypt password hashes in its state database.

``tidelake users add|list|remove`` manage them; the API accepts them (HTTP Basic) as an
alternative to the bearer token. The file is ``.tidelake/state.db`` beside the pipeline,
never the pipeline's own database (whose tables the query engine serves), created with
mode 0600. Hashes are ``scrypt$N$r$p$salt$hash`` (stdlib ``hashlib.scrypt``); a password
is never stored, logged or echoed.

The PostgreSQL wire endpoint authenticates with SCRAM-SHA-256, which needs the salted
password's stored and server keys, not a scrypt hash: ``add`` keeps that verifier too
(``SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey``, PostgreSQL's own format; neither
key gives the password back). An account added before verifiers existed gets one when it is
added again (``tidelake users add`` with the same name replaces it).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import secrets
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

from tidelake.config import Pipeline
from tidelake.errors import ConfigError

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
"""viewer reads (tables, SQL, status); operator also ingests; admin may do everything."""
MIN_PASSWORD = 12
_N, _R, _P = 2**14, 8, 1
SCRAM_ITERATIONS = 4096
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    created_at: datetime


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password`` (N=2^14, r=8, p=1: 16 MiB, ~50 ms)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (constant-time compare)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        given = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return kind == "scrypt" and hmac.compare_digest(given, expected)


ScramKeys = tuple[bytes, bytes, bytes, int]
"""salt, stored key, server key, iterations: what ``scramp`` needs to check a login."""


def scram_verifier(password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password`` in PostgreSQL's text form."""
    import scramp  # the serve extra

    salt, stored, server, iterations = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
        password, iteration_count=SCRAM_ITERATIONS
    )
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored).decode()}:"
        + b64(server).decode()
    )


def scram_keys(verifier: str) -> ScramKeys:
    """``scram_verifier``'s text back as keys (``ValueError`` when it is not one)."""
    kind, head, keys = verifier.split("$")
    iterations, salt = head.split(":")
    stored, server = keys.split(":")
    if kind != "SCRAM-SHA-256":
        raise ValueError(f"not a SCRAM-SHA-256 verifier: {kind}")
    b64 = base64.b64decode
    return b64(salt), b64(stored), b64(server), int(iterations)


@functools.cache
def decoy_scram_keys() -> ScramKeys:
    """Keys no password matches: an unknown user's login fails like a wrong password."""
    return scram_keys(scram_verifier(secrets.token_urlsafe(16)))


@functools.cache
def _decoy() -> str:
    return hash_password(secrets.token_urlsafe(16))


class Users:
    """The accounts table of one pipeline's state database."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.path = pipeline.state_dir / "state.db"
        self._verified: dict[tuple[str, bytes], str] = {}

    def _connect(self, create: bool = False) -> sqlite3.Connection | None:
        if not self.path.exists():
            if not create:
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute(
            "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role TEXT NOT NULL, "
            "password_hash TEXT NOT NULL, created_at TEXT NOT NULL)"
        )
        columns = {row[1] for row in con.execute("PRAGMA table_info(users)")}
        if "scram" not in columns:  # state databases from before the pg-wire endpoint
            con.execute("ALTER TABLE users ADD COLUMN scram TEXT")
        return con

    def add(self, name: str, role: str, password: str) -> None:
        """Create or replace account ``name`` (``ConfigError`` on a bad name, role or password)."""
        if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
            raise ConfigError(
                f"user name {name!r}: use 1-64 letters, digits or '._-@' (no spaces or ':')"
            )
        if role not in ROLES:
            raise ConfigError(f"role {role!r}: use one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise ConfigError(
                f"password of {name!r} too short: use at least {MIN_PASSWORD} characters"
            )
        con = self._connect(create=True)
        assert con is not None
        with con:
            con.execute(
                "INSERT OR REPLACE INTO users (name, role, password_hash, created_at, scram) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    name,
                    role,
                    hash_password(password),
                    datetime.now(UTC).isoformat(),
                    scram_verifier(password),
                ),
            )
        con.close()

    def remove(self, name: str) -> bool:
        """Delete account ``name``; False when there was none."""
        con = self._connect()
        if con is None:
            return False
        with con:
            removed = con.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount
        con.close()
        return bool(removed)

    def list(self) -> list[User]:
        con = self._connect()
        if con is None:
            return []
        rows = con.execute("SELECT name, role, created_at FROM users ORDER BY name").fetchall()
        con.close()
        return [User(n, r, datetime.fromisoformat(c)) for n, r, c in rows]

    def exist(self) -> bool:
        """True when the pipeline has at least one account (then the API requires a login)."""
        return bool(self.list())

    def scram(self, name: str) -> tuple[User, ScramKeys] | None:
        """Account ``name`` and its SCRAM keys; None when there is no such account or it has
        no verifier yet (added before the pg-wire endpoint: add it again)."""
        con = self._connect()
        if con is None:
            return None
        with closing(con):
            row = con.execute(
                "SELECT role, created_at, scram FROM users WHERE name = ?", (name,)
            ).fetchone()
        if row is None or not row[2]:
            return None
        role, created, verifier = row
        try:
            keys = scram_keys(verifier)
        except ValueError:
            return None
        return User(name, role, datetime.fromisoformat(created)), keys

    def authenticate(self, name: str, password: str) -> User | None:
        """The account when ``password`` is its password, else None.

        A verified (name, password) is remembered against the stored hash, so repeated
        requests skip scrypt; a removed account or a new password takes effect at once."""
        con = self._connect()
        if con is None:
            return None
        row = con.execute(
            "SELECT role, password_hash, created_at FROM users WHERE name = ?", (name,)
        ).fetchone()
        con.close()
        if row is None:
            verify_password(password, _decoy())  # a missing name costs the same time
            return None
        role, stored, created = row
        key = (name, hashlib.sha256(password.encode()).digest())
        if self._verified.get(key) != stored:
            if not verify_password(password, stored):
                return None
            if len(self._verified) > 1024:
                self._verified.clear()
            self._verified[key] = stored
        return User(name, role, datetime.fromisoformat(created))


__all__ = [
    "MIN_PASSWORD",
    "ROLES",
    "Role",
    "ScramKeys",
    "User",
    "Users",
    "decoy_scram_keys",
    "hash_password",
    "scram_keys",
    "scram_verifier",
    "verify_password",
]
