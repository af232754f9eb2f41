"""The PostgreSQL wire endpoint: start-up, TLS, SCRAM-SHA-256 login, cancel requests.

``tidelake serve PIPELINE --pg-port 15432`` runs it beside the HTTP API, in a thread with
its own asyncio loop and its own pool of sandboxed engines. Logins are the pipeline's users
(``tidelake users add``), checked with SCRAM-SHA-256: the password never
crosses the wire and the server keeps only the verifier. When the endpoint needs no login
(loopback, no user, no API token: the HTTP API's own rule) any user name is accepted.
An ``SSLRequest`` is answered ``S`` and the connection upgraded when a certificate is
configured, ``N`` otherwise; a client that insists on TLS then stops by itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import logging
import secrets
import ssl
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tidelake.config import Pipeline
from tidelake.errors import ConfigError
from tidelake.serve.engine import EnginePool, Limits
from tidelake.serve.pgwire import commands, messages
from tidelake.serve.pgwire.messages import Body, ProtocolError
from tidelake.serve.pgwire.session import Session
from tidelake.serve.users import ScramKeys, Users, decoy_scram_keys

log = logging.getLogger(__name__)
_SCRAM = "SCRAM-SHA-256"


@dataclass(frozen=True)
class TLS:
    """A certificate and its key (PEM files) for TLS connections."""

    certificate: str
    key: str

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificate, self.key)
        return context


class _ScramExchange:
    """The server side of one SCRAM-SHA-256 exchange (RFC 5802/7677) against stored keys.

    PostgreSQL clients send an empty user name in the SCRAM messages (the user is the one of
    the start-up packet), which ``scramp``'s server refuses; the exchange itself is these two
    steps, ``scramp`` makes the verifiers (``tidelake.serve.users``)."""

    def __init__(self, keys: ScramKeys) -> None:
        self.salt, self.stored, self.server, self.iterations = keys

    def first(self, client_first: str) -> str:
        header, _, bare = client_first.partition(",")
        header += "," + bare.split(",", 1)[0]
        bare = bare.split(",", 1)[1]
        if header[0] not in "ny":
            raise ValueError("channel binding is not offered")
        nonce = dict(f.split("=", 1) for f in bare.split(",") if "=" in f).get("r", "")
        if not nonce:
            raise ValueError("client nonce missing")
        self.header, self.bare = header + ",", bare
        self.nonce = nonce + secrets.token_urlsafe(18)
        salt = base64.b64encode(self.salt).decode()
        self.server_first = f"r={self.nonce},s={salt},i={self.iterations}"
        return self.server_first

    def final(self, client_final: str) -> str:
        without_proof, _, proof = client_final.rpartition(",p=")
        fields = dict(f.split("=", 1) for f in without_proof.split(","))
        binding = base64.b64encode(self.header.encode()).decode()
        if fields.get("c") != binding or fields.get("r") != self.nonce:
            raise ValueError("channel binding or nonce mismatch")
        message = f"{self.bare},{self.server_first},{without_proof}".encode()
        signature = hmac.digest(self.stored, message, "sha256")
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored):
            raise ValueError("wrong password")
        verifier = base64.b64encode(hmac.digest(self.server, message, "sha256")).decode()
        return f"v={verifier}"


class PgServer:
    """The endpoint of one pipeline; ``login`` says whether users must log in."""

    def __init__(
        self,
        pipeline: Pipeline,
        login: bool,
        limits: Limits | None = None,
        tls: TLS | None = None,
    ) -> None:
        self.pipeline, self.login = pipeline, login
        self.limits = limits or Limits()
        self.users = Users(pipeline)
        self.pool = EnginePool(pipeline, self.limits)
        self.tls = tls.context() if tls else None
        self._ids = itertools.count(1)
        self._sessions: dict[int, tuple[bytes, Session]] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection, from its first packet to its last."""
        try:
            await self._connection(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client went away
        except (ProtocolError, struct.error, UnicodeDecodeError, ValueError) as e:
            writer.write(messages.error("08P01", f"protocol violation: {e}", "FATAL"))
        except Exception:
            log.exception("pg-wire connection failed")
            writer.write(messages.error("XX000", "internal error (see the server log)", "FATAL"))
        finally:
            try:
                await writer.drain()
                writer.close()
            except (ConnectionError, ssl.SSLError, RuntimeError):
                pass

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await messages.read_startup(reader)
        code = struct.unpack_from("!i", body)[0]
        while code in (messages.SSL_REQUEST, messages.GSSENC_REQUEST):
            if code == messages.SSL_REQUEST and self.tls is not None:
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self.tls)
            else:
                writer.write(b"N")
                await writer.drain()
            body = await messages.read_startup(reader)
            code = struct.unpack_from("!i", body)[0]
        if code == messages.CANCEL_REQUEST:
            self._cancel(body)
            return
        if code != messages.PROTOCOL_3:
            raise ProtocolError(f"unsupported protocol version {code >> 16}.{code & 0xFFFF}")
        startup = messages.startup_parameters(body)
        user = startup.get("user", "")
        if self.login and not await self._authenticate(user, reader, writer):
            return
        writer.write(messages.authentication(0))
        parameters = commands.initial_parameters(user, startup.get("application_name", ""))
        for name in commands.REPORTED:
            writer.write(messages.parameter_status(name, parameters[name.lower()]))
        session = Session(self.pool, self.limits.max_rows, user, parameters, reader, writer)
        with self._registered(session) as (pid, key):
            writer.write(messages.message(b"K", struct.pack("!i", pid) + key))
            await session.run()

    async def _authenticate(
        self, user: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """SCRAM-SHA-256 against the user's verifier; an unknown user fails like a wrong
        password, after the same exchange."""
        found = self.users.scram(user)
        keys = found[1] if found is not None else decoy_scram_keys()
        writer.write(messages.authentication(10, messages.cstring(_SCRAM) + b"\0"))
        await writer.drain()
        kind, data = await messages.read_message(reader)
        body = Body(data)
        if kind != b"p" or body.cstring() != _SCRAM:
            raise ProtocolError("expected a SASLInitialResponse for SCRAM-SHA-256")
        exchange = _ScramExchange(keys)
        try:
            server_first = exchange.first(body.bytes(body.int32()).decode())
            writer.write(messages.authentication(11, server_first.encode()))
            await writer.drain()
            kind, data = await messages.read_message(reader)
            if kind != b"p":
                raise ProtocolError("expected a SASLResponse")
            server_final = exchange.final(data.decode())
        except ValueError:
            found = None
        if found is None:
            failed = f'password authentication failed for user "{user}"'
            writer.write(messages.error("28P01", failed, "FATAL"))
            return False
        writer.write(messages.authentication(12, server_final.encode()))
        return True

    @contextmanager
    def _registered(self, session: Session) -> Iterator[tuple[int, bytes]]:
        pid, key = next(self._ids), secrets.token_bytes(4)
        self._sessions[pid] = (key, session)
        try:
            yield pid, key
        finally:
            self._sessions.pop(pid, None)

    def _cancel(self, body: bytes) -> None:
        """A CancelRequest: stop the named session's running query if the key matches."""
        pid, key = struct.unpack_from("!i", body, 4)[0], body[8:12]
        entry = self._sessions.get(pid)
        if entry is not None and hmac.compare_digest(entry[0], key):
            entry[1].cancel.set()

    def close(self) -> None:
        self.pool.close()


class Running:
    """A ``PgServer`` listening in a background thread (``stop`` ends it)."""

    def __init__(self, server: PgServer, host: str, port: int) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = port
        self._thread = threading.Thread(
            target=self._run, args=(host, port), daemon=True, name="tidelake-pgwire"
        )
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise ConfigError(f"cannot listen on {host}:{port} for pg-wire: {self._error}")

    def _run(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main(host, port))

    async def _main(self, host: str, port: int) -> None:
        self._stop = asyncio.Event()
        try:
            listener = await asyncio.start_server(self.server.handle, host, port)
        except OSError as e:
            self._error = e
            self._started.set()
            return
        self.port = listener.sockets[0].getsockname()[1]
        self.server.pool.warm()
        self._started.set()
        async with listener:
            await self._stop.wait()

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.server.close()


def start(
    pipeline: Pipeline,
    host: str,
    port: int,
    login: bool,
    limits: Limits | None = None,
    tls: TLS | None = None,
) -> Running:
    """Listen on ``host:port`` (0: any free port, see ``Running.port``) until ``stop``."""
    return Running(PgServer(pipeline, login, limits, tls), host, port)


__all__ = ["TLS", "PgServer", "Running", "start"]
