"""Accounts of one pipeline: names, roles and scrypt password hashes in its state database.

``tidelake users add|list|remove`` manage them; the API accepts them (HTTP Basic) as an
alternative to the bearer token. The file is ``.tidelake/state.db`` beside the pipeline,
never the pipeline's own database (whose tables the query engine serves), created with
mode 0600. Hashes are ``scrypt$N$r$p$salt$hash`` (stdlib ``hashlib.scrypt``); a password
is never stored, logged or echoed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import secrets
import sqlite3
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
                "INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?)",
                (name, role, hash_password(password), datetime.now(UTC).isoformat()),
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


__all__ = ["MIN_PASSWORD", "ROLES", "Role", "User", "Users", "hash_password", "verify_password"]
