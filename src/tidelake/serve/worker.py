"""User SQL runs in worker processes: the wall that holds when DuckDB's own limits do not.

DuckDB's ``memory_limit`` does not cover every allocation (one scalar call such as
``range(100000000)`` or ``[repeat('z', 100000) FOR i IN range(50000)]`` builds its
whole value outside the buffer manager), and ``interrupt`` is only seen between
vectors, so a single function call can outrun both by gigabytes and tens of seconds.
So each pooled engine is a child process (``python -m tidelake.serve.worker``)
holding a ``SandboxedEngine``. The parent waits for the answer while sampling the
child's RSS every ``_TICK`` seconds and kills the child the moment it passes its
ceiling (its idle RSS + ``memory_limit``) or the deadline: the kill is immediate
and returns all the child's memory. A killed worker is replaced on next use.

Frames on the child's stdin/stdout: an 8-byte big-endian length, then the bytes.
Requests and errors are JSON; a result is an Arrow IPC stream.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa

from tidelake.config import Pipeline
from tidelake.errors import QueryError

_HEADER = struct.Struct(">Q")
_TICK = 0.01
STARTUP = 120.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


class WorkerKilled(QueryError):
    """The worker passed a hard limit and was killed; ``reason`` is ``time`` or ``memory``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class QueryCancelled(QueryError):
    """The client cancelled the query; its worker was killed."""


class ResultTooLarge(QueryError):
    """The result is larger than the configured byte limit."""


def _write(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("worker closed its pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> bytes:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    return _read_exact(fd, size)


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def setup_frame(pipeline: Pipeline, limits: dict[str, Any]) -> bytes:
    """What a worker needs to open the pipeline's tables (no flows: it never runs them)."""
    fields = pipeline.model_dump(
        mode="json", exclude={"flows", "schedules", "queries", "dashboard", "serve"}
    )
    return orjson.dumps(
        {"pipeline": fields | {"flows": {}}, "base_dir": str(pipeline.base_dir), "limits": limits}
    )


class Worker:
    """One child process running one query at a time."""

    def __init__(self, setup: bytes, memory_limit: int) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidelake.serve.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            # out of the terminal's process group: Ctrl-C stops the server, which ends its
            # workers (their stdin closes); it must not kill them mid-start with a traceback
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin
        self._out = self.proc.stdout.fileno()
        _write(self._in, setup)
        self._answer(time.monotonic() + STARTUP, ceiling=None, what="starting")
        idle = rss_bytes(self.proc.pid)
        self.ceiling = idle + memory_limit
        self._worn_at = idle + memory_limit // 2

    @property
    def worn(self) -> bool:
        """Its memory stayed above half its limit after a query (allocators keep freed
        pages): the next query, however small, could pass the ceiling, so it is replaced."""
        return rss_bytes(self.proc.pid) > self._worn_at

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(
        self,
        request: dict[str, Any],
        deadline: float,
        timeout: float,
        cancel: threading.Event | None = None,
    ) -> pa.Table:
        """Send one query; the table, or ``WorkerKilled``/``ResultTooLarge``/``QueryError``
        (``QueryCancelled`` once ``cancel`` is set)."""
        _write(self._in, orjson.dumps(request))
        head = self._answer(deadline, self.ceiling, f"the {timeout:g} s time limit", cancel)
        if "error" in head:
            kind = ResultTooLarge if head.get("kind") == "size" else QueryError
            raise kind(str(head["error"]))
        with pa.ipc.open_stream(_read_frame(self._out)) as reader:
            return reader.read_all()

    def _answer(
        self,
        deadline: float,
        ceiling: int | None,
        what: str,
        cancel: threading.Event | None = None,
    ) -> dict[str, Any]:
        while True:
            if cancel is not None and cancel.is_set():
                self.kill()
                raise QueryCancelled("canceling statement due to user request")
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise WorkerKilled("time", f"query stopped after {what}")
            ready, _, _ = select.select([self._out], [], [], min(_TICK, left))
            if ready:
                try:
                    head: dict[str, Any] = orjson.loads(_read_frame(self._out))
                except (EOFError, orjson.JSONDecodeError):
                    self.kill()
                    raise QueryError("the query worker stopped unexpectedly") from None
                return head
            if ceiling is not None and rss_bytes(self.proc.pid) > ceiling:
                self.kill()
                raise WorkerKilled("memory", "query stopped: it needed more than its memory limit")
            if not self.alive:
                raise QueryError("the query worker stopped unexpectedly")

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self._in, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:  # the unread input of a dead worker
                pass

    def close(self) -> None:
        """Ask the worker to exit (end of its input), then make sure it did."""
        try:
            self._in.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


def _serve(inp: IO[bytes], out: IO[bytes]) -> None:
    from tidelake.serve.engine import Limits, SandboxedEngine

    fd = inp.fileno()
    setup = orjson.loads(_read_frame(fd))
    pipeline = Pipeline.model_validate(setup["pipeline"])
    pipeline.base_dir = Path(setup["base_dir"])
    limits = Limits(**setup["limits"])
    engine = SandboxedEngine(pipeline, limits)
    _write(out, b'{"ready": true}')
    while True:
        try:
            request = orjson.loads(_read_frame(fd))
        except EOFError:
            return
        try:
            table = engine.run(
                request["sql"],
                request["params"],
                request["bind"],
                request["as_of"],
                request.get("system", False),
            )
        except QueryError as e:
            _write(out, orjson.dumps({"error": str(e)}))
            continue
        if table.nbytes > limits.max_bytes:
            message = (
                f"result is larger than {limits.max_bytes // 2**20} MB ({table.nbytes // 2**20} "
                "MB): select fewer rows or columns, or aggregate"
            )
            _write(out, orjson.dumps({"error": message, "kind": "size"}))
            continue
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        _write(out, b'{"ok": true}')
        _write(out, sink.getvalue().to_pybytes())


def main() -> None:
    """``python -m tidelake.serve.worker``: answer queries on stdin/stdout until stdin ends."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the frames
    with contextlib.suppress(BrokenPipeError):  # the server went away: nothing to answer
        _serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
