"""One client connection after its login: the simple and the extended query protocol.

Every query goes through ``EnginePool.select`` (the guard, the row cap, a sandboxed worker
under the time and memory limits of ``POST /api/query``); session commands are answered
from the session's parameters (``commands``). Results go in text format, or in binary where
the Bind message asks for it (JDBC, for prepared statements; ``types``). A
transaction is a read-only formality: ``BEGIN``/``COMMIT`` are acknowledged, an error inside
one fails it until ``ROLLBACK`` as PostgreSQL does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from tidelake.errors import ConnectorError, QueryError, TidelakeError
from tidelake.serve.engine import (
    EngineBusy,
    EnginePool,
    QueryCancelled,
    QueryTimeout,
    ResultTooLarge,
    sanitize,
)
from tidelake.serve.pgwire import commands, messages
from tidelake.serve.pgwire.commands import Command
from tidelake.serve.pgwire.messages import Body, ProtocolError, Status
from tidelake.serve.pgwire.types import TEXT, data_rows
from tidelake.serve.sql_guard import SQLRefused


class SessionError(Exception):
    """An error for the client: SQLSTATE ``code`` and a message naming what to change."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


@dataclass
class Prepared:
    sql: str
    command: Command | None
    oids: list[int]
    schema: pa.Schema | None = None


@dataclass
class Portal:
    prepared: Prepared
    params: list[object]
    result: pa.Table | None = None
    tag: str = ""
    sent: int = 0
    described: bool = field(default=False)
    formats: list[int] = field(default_factory=list)
    """The result format codes of its Bind (``types.result_format``)."""


class Session:
    """The protocol state of one connection."""

    def __init__(
        self,
        pool: EnginePool,
        max_rows: int,
        user: str,
        parameters: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.pool, self.max_rows, self.user = pool, max_rows, user
        self.parameters = parameters
        self.reader, self.writer = reader, writer
        self.status = Status.IDLE
        self.statements: dict[str, Prepared] = {}
        self.portals: dict[str, Portal] = {}
        self.cancel = threading.Event()

    async def run(self) -> None:
        """Answer messages until the client terminates or goes away."""
        self.writer.write(messages.ready(self.status))
        await self.writer.drain()
        skipping = False  # after an error in an extended-protocol batch, until Sync
        while True:
            kind, data = await messages.read_message(self.reader)
            if kind == b"X":
                return
            if kind == b"S":
                skipping = False
                self._drop_unnamed_portal()
                self.writer.write(messages.ready(self.status))
            elif kind == b"H":
                pass
            elif kind == b"Q":
                await self._simple(Body(data).cstring())
                self.writer.write(messages.ready(self.status))
            elif skipping:
                continue
            else:
                try:
                    await self._extended(kind, Body(data))
                except SessionError as e:
                    self._fail(e)
                    skipping = True
            await self.writer.drain()

    # -- simple query -------------------------------------------------------------

    async def _simple(self, text: str) -> None:
        for sql in commands.split_statements(text):
            try:
                prepared = self._prepare(sql, [])
                portal = Portal(prepared, [None] * commands.placeholders(sql))
                await self._execute(portal)
                if portal.result is not None:
                    self.writer.write(messages.row_description(portal.result.schema))
                self._send(portal, 0)
            except SessionError as e:
                self._fail(e)
                return

    # -- extended query -----------------------------------------------------------

    async def _extended(self, kind: bytes, body: Body) -> None:
        if kind == b"P":
            name, sql = body.cstring(), body.cstring()
            oids = [body.int32() for _ in range(body.int16())]
            self.statements[name] = self._prepare(sql, oids)
            self.writer.write(messages.PARSE_COMPLETE)
        elif kind == b"B":
            self._bind(body)
            self.writer.write(messages.BIND_COMPLETE)
        elif kind == b"D":
            what, name = body.bytes(1), body.cstring()
            if what == b"S":
                await self._describe_statement(self._statement(name))
            else:
                portal = self._portal(name)
                await self._execute(portal)
                schema = portal.result.schema if portal.result is not None else None
                self._describe(schema, portal.formats)
                portal.described = True
        elif kind == b"E":
            name, limit = body.cstring(), body.int32()
            portal = self._portal(name)
            await self._execute(portal)
            self._send(portal, limit)
        elif kind == b"C":
            what, name = body.bytes(1), body.cstring()
            (self.statements if what == b"S" else self.portals).pop(name, None)
            self.writer.write(messages.CLOSE_COMPLETE)
        else:
            raise ProtocolError(f"unexpected message type {kind!r}")

    def _prepare(self, sql: str, oids: list[int]) -> Prepared:
        try:
            return Prepared(sql, commands.command(sql), oids)
        except QueryError as e:
            raise SessionError("0A000", str(e)) from None

    def _statement(self, name: str) -> Prepared:
        prepared = self.statements.get(name)
        if prepared is None:
            raise SessionError("26000", f"prepared statement {name!r} does not exist")
        return prepared

    def _portal(self, name: str) -> Portal:
        portal = self.portals.get(name)
        if portal is None:
            raise SessionError("34000", f"portal {name!r} does not exist")
        return portal

    def _bind(self, body: Body) -> None:
        portal_name, prepared = body.cstring(), self._statement(body.cstring())
        formats = [body.int16() for _ in range(body.int16())]
        count = body.int16()
        oids = prepared.oids + [0] * (count - len(prepared.oids))
        params = []
        for i in range(count):
            size = body.int32()
            value = None if size < 0 else body.bytes(size)
            binary = (formats[i] if len(formats) > 1 else formats[0] if formats else 0) == 1
            try:
                params.append(commands.parameter(value, oids[i], binary))
            except (QueryError, ValueError) as e:
                raise SessionError("22P02", f"parameter ${i + 1}: {e}") from None
        results = [body.int16() for _ in range(body.int16())]
        self.portals[portal_name] = Portal(prepared, params, formats=results)

    async def _describe_statement(self, prepared: Prepared) -> None:
        count = max(len(prepared.oids), commands.placeholders(prepared.sql))
        oids = [oid or TEXT.oid for oid in prepared.oids] + [TEXT.oid] * (
            count - len(prepared.oids)
        )
        self.writer.write(messages.parameter_description(oids))
        if prepared.command is not None:
            shown = prepared.command.kind == "SHOW"
            self._describe(pa.schema([(prepared.command.name, pa.string())]) if shown else None)
            return
        if prepared.schema is None:
            empty = await self._select(prepared.sql, [None] * count, rows=0)
            prepared.schema = empty.schema
        self._describe(prepared.schema)

    def _describe(self, schema: pa.Schema | None, formats: Sequence[int] = ()) -> None:
        if schema is None:
            self.writer.write(messages.NO_DATA)
        else:
            self.writer.write(messages.row_description(schema, formats))

    # -- running ------------------------------------------------------------------

    async def _execute(self, portal: Portal) -> None:
        """Run the portal once (Describe and Execute of one portal share the result)."""
        if portal.result is not None or portal.tag:
            return
        prepared = portal.prepared
        if self.status == Status.FAILED and not (
            prepared.command and prepared.command.kind in ("ROLLBACK", "COMMIT")
        ):
            raise SessionError(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            )
        if prepared.command is not None:
            self._run_command(portal, prepared.command)
            return
        result = await self._select(prepared.sql, portal.params, rows=self.max_rows + 1)
        if result.num_rows > self.max_rows:
            raise SessionError(
                "54000",
                f"the result has more than {self.max_rows} rows (the server's row limit): "
                "aggregate, filter or add a LIMIT",
            )
        portal.result, portal.tag = result, f"SELECT {result.num_rows}"

    def _run_command(self, portal: Portal, cmd: Command) -> None:
        if cmd.kind == "SHOW":
            value = self.parameters.get(cmd.name)
            if value is None:
                raise SessionError("42704", f'unrecognized configuration parameter "{cmd.name}"')
            portal.result = pa.table({cmd.name: pa.array([value], pa.string())})
            portal.tag = "SHOW"
            return
        if cmd.kind == "SET" and cmd.name:
            self.parameters[cmd.name] = cmd.value
        elif cmd.kind == "BEGIN":
            self.status = Status.IN_TRANSACTION
        elif cmd.kind in ("COMMIT", "ROLLBACK"):
            failed = self.status == Status.FAILED
            self.status = Status.IDLE
            cmd = Command("ROLLBACK") if failed else cmd
        portal.tag = cmd.kind

    async def _select(self, sql: str, params: list[object], rows: int) -> pa.Table:
        system = commands.is_system(sql)
        if system:
            sql = commands.rewrite_system(sql, self.user)
        self.cancel.clear()
        try:
            return await asyncio.to_thread(
                self.pool.select,
                sql,
                rows,
                params if params else None,
                system=system,
                cancel=self.cancel,
            )
        except SQLRefused as e:
            raise SessionError("42501", sanitize(str(e))) from None
        except (QueryTimeout, QueryCancelled) as e:
            raise SessionError("57014", str(e)) from None
        except ResultTooLarge as e:
            raise SessionError("54000", str(e)) from None
        except EngineBusy as e:
            raise SessionError("53000", str(e)) from None
        except ConnectorError as e:
            raise SessionError("58000", sanitize(str(e))) from None
        except TidelakeError as e:
            raise SessionError("42000", sanitize(str(e))) from None

    def _send(self, portal: Portal, limit: int) -> None:
        if portal.prepared.command is not None and portal.prepared.command.kind == "EMPTY":
            self.writer.write(messages.EMPTY_QUERY)
            return
        result = portal.result
        if result is not None:
            end = result.num_rows if limit <= 0 else min(result.num_rows, portal.sent + limit)
            try:
                rows = data_rows(result.slice(portal.sent, end - portal.sent), portal.formats)
            except ValueError as e:
                raise SessionError("0A000", str(e)) from None
            self.writer.write(rows)
            portal.sent = end
            if end < result.num_rows:
                self.writer.write(messages.PORTAL_SUSPENDED)
                return
        self.writer.write(messages.command_complete(portal.tag))

    def _fail(self, e: SessionError) -> None:
        if self.status == Status.IN_TRANSACTION:
            self.status = Status.FAILED
        self.writer.write(messages.error(e.code, str(e)))

    def _drop_unnamed_portal(self) -> None:
        self.portals.pop("", None)


__all__ = ["Session", "SessionError"]
