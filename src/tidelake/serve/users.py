"""The state database of one pipeline: accounts (names, roles, scrypt password hashes), the
operators' login sessions and the form entries (the audit trail of ``tidelake.serve.forms``).

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

A session is known by the SHA-256 of its token (the cookie's value is never stored), ends at
``serve: {session_minutes}`` after the login, at logout, or when its account is removed, and
carries the CSRF token its forms must send back. An entry is claimed under its idempotency
key before it is produced, so the same key lands once however often it is submitted.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

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


_TABLES = (
    "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role TEXT NOT NULL, "
    "password_hash TEXT NOT NULL, created_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions (token_hash TEXT PRIMARY KEY, user TEXT NOT NULL, "
    "csrf TEXT NOT NULL, expires_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS entries (entry_id TEXT PRIMARY KEY, form TEXT NOT NULL, "
    "user TEXT NOT NULL, entered_at TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, "
    "payload TEXT NOT NULL)",
)


def open_state(path: Path, create: bool = False) -> sqlite3.Connection | None:
    """The state database at ``path`` (mode 0600 when created); None when it does not exist
    and ``create`` is False."""
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    con = sqlite3.connect(path, timeout=30, isolation_level=None)
    for table in _TABLES:
        con.execute(table)
    columns = {row[1] for row in con.execute("PRAGMA table_info(users)")}
    if "scram" not in columns:  # state databases from before the pg-wire endpoint
        con.execute("ALTER TABLE users ADD COLUMN scram TEXT")
    return con


class Users:
    """The accounts table of one pipeline's state database."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.path = pipeline.state_dir / "state.db"
        self._verified: dict[tuple[str, bytes], str] = {}

    def _connect(self, create: bool = False) -> sqlite3.Connection | None:
        return open_state(self.path, create)

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


@dataclass(frozen=True)
class Session:
    """A logged-in user: the account's current role, and the CSRF token its forms carry."""

    user: str
    role: Role
    csrf: str
    expires_at: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """Login sessions of one pipeline, known by their token's hash."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.path = pipeline.state_dir / "state.db"
        self.ttl = timedelta(minutes=pipeline.serve.session_minutes)

    def open(self, user: User) -> tuple[str, Session]:
        """A new session of ``user``: its token (for the cookie) and the session."""
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        session = Session(user.name, user.role, secrets.token_urlsafe(32), now + self.ttl)
        con = open_state(self.path, create=True)
        assert con is not None
        with closing(con):
            con.execute("DELETE FROM sessions WHERE expires_at < ?", (now.isoformat(),))
            con.execute(
                "INSERT INTO sessions (token_hash, user, csrf, expires_at) VALUES (?, ?, ?, ?)",
                (_digest(token), user.name, session.csrf, session.expires_at.isoformat()),
            )
        return token, session

    def get(self, token: str) -> Session | None:
        """The live session of ``token``; None when unknown, expired or its account is gone."""
        con = open_state(self.path)
        if con is None or not token:
            return None
        with closing(con):
            row = con.execute(
                "SELECT s.user, u.role, s.csrf, s.expires_at FROM sessions s "
                "JOIN users u ON u.name = s.user WHERE s.token_hash = ? AND s.expires_at > ?",
                (_digest(token), datetime.now(UTC).isoformat()),
            ).fetchone()
        if row is None:
            return None
        return Session(row[0], row[1], row[2], datetime.fromisoformat(row[3]))

    def close(self, token: str) -> None:
        """End the session of ``token`` (logout)."""
        con = open_state(self.path)
        if con is not None:
            with closing(con):
                con.execute("DELETE FROM sessions WHERE token_hash = ?", (_digest(token),))


EntryStatus = Literal["pending", "sent", "refused", "failed"]
STALE = timedelta(minutes=2)
"""A pending entry this old lost its door (a write to the log waits 30 s at most)."""


@dataclass(frozen=True)
class Entry:
    """One submission of a form: who, when, what, and what became of it."""

    entry_id: str
    form: str
    user: str
    entered_at: datetime
    status: EntryStatus
    reason: str | None
    payload: dict[str, Any]


class Entries:
    """The form entries of one pipeline: the audit trail and the idempotency keys."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.path = pipeline.state_dir / "state.db"

    def claim(self, entry: Entry) -> bool:
        """Record ``entry`` (status pending) unless its key is taken. A key may be claimed
        again when its entry failed to reach the log, or is still pending ``STALE`` after its
        claim (its door died before the log answered: the entry may be in the log twice
        then, which a flow upserting by ``entry_id`` lands once). True when this call owns
        the key."""
        con = open_state(self.path, create=True)
        assert con is not None
        row = (entry.entered_at.isoformat(), json.dumps(entry.payload), entry.entry_id)
        stale = (entry.entered_at - STALE).isoformat()
        with closing(con):
            try:
                con.execute(
                    "INSERT INTO entries (entered_at, payload, entry_id, form, user, status) "
                    "VALUES (?, ?, ?, ?, ?, 'pending')",
                    (*row, entry.form, entry.user),
                )
                return True
            except sqlite3.IntegrityError:
                retried = con.execute(
                    "UPDATE entries SET entered_at = ?, payload = ?, status = 'pending', "
                    "reason = NULL WHERE entry_id = ? AND (status = 'failed' OR "
                    "(status = 'pending' AND entered_at < ?))",
                    (*row, stale),
                )
                return retried.rowcount == 1

    def record(self, entry: Entry) -> None:
        """Record an entry as it is (a refused one)."""
        con = open_state(self.path, create=True)
        assert con is not None
        with closing(con):
            con.execute(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                (entry.entry_id, entry.form, entry.user, entry.entered_at.isoformat(),
                 entry.status, entry.reason, json.dumps(entry.payload)),
            )  # fmt: skip

    def finish(self, entry_id: str, status: EntryStatus, reason: str | None = None) -> None:
        con = open_state(self.path, create=True)
        assert con is not None
        with closing(con):
            con.execute(
                "UPDATE entries SET status = ?, reason = ? WHERE entry_id = ?",
                (status, reason, entry_id),
            )

    def list(self, form: str | None = None, entry_id: str | None = None) -> list[Entry]:
        """Entries, newest first (of one form, or the one with ``entry_id``)."""
        con = open_state(self.path)
        if con is None:
            return []
        with closing(con):
            rows = con.execute(
                "SELECT entry_id, form, user, entered_at, status, reason, payload FROM entries "
                "WHERE (? IS NULL OR form = ?) AND (? IS NULL OR entry_id = ?) "
                "ORDER BY entered_at DESC, rowid DESC",
                (form, form, entry_id, entry_id),
            ).fetchall()
        return [
            Entry(e, f, u, datetime.fromisoformat(t), s, r, json.loads(p))
            for e, f, u, t, s, r, p in rows
        ]


__all__ = [
    "MIN_PASSWORD",
    "ROLES",
    "STALE",
    "Entries",
    "Entry",
    "Role",
    "ScramKeys",
    "Session",
    "Sessions",
    "User",
    "Users",
    "decoy_scram_keys",
    "hash_password",
    "scram_keys",
    "scram_verifier",
    "verify_password",
]
