"""Group commit: many threads' appends, one log transaction per group.

``Writer.submit`` queues a request and returns a future; one writer thread takes every queued
request (up to ``MAX_GROUP_RECORDS``/``MAX_GROUP_BYTES``, in arrival order) and appends them
with one ``Producer.produce_batches``: one SQLite transaction on the embedded log, one
``flush`` on Kafka. A future is resolved only after that call returned, so a request answered
as written has its records durable, each request's records contiguous and in order.

On an atomic log (embedded) a failed group landed nothing, so each of its requests is retried
alone: a request that cannot be written (a compacted topic without keys) fails by itself and
the others land once. On Kafka a failed flush leaves delivery unknown, so the whole group fails
as a single request would (resending is the client's call, as before).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from tidelake.broker import base

MAX_GROUP_RECORDS = 200_000
MAX_GROUP_BYTES = 64 * 2**20
log = logging.getLogger(__name__)


@dataclass
class _Request:
    topic: str
    values: Sequence[bytes]
    size: int
    future: Future[None] = field(default_factory=Future)


class Writer:
    """Appends records to topics of the log at ``url``, connecting on the first write; safe
    to share between threads. A write is done once its records are durable."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._broker: base.Broker | None = None
        self._producer: base.Producer | None = None
        self._queue: deque[_Request] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.groups = 0
        """Log transactions (groups) written so far."""

    def submit(self, topic: str, values: Sequence[bytes]) -> Future[None]:
        """Queue ``values`` for ``topic``; the future is done once they are durable (or
        failed: nothing of them landed on the embedded log). Cancelling it before the writer
        takes it keeps it out of the log."""
        request = _Request(topic, values, sum(map(len, values)))
        with self._wake:
            if self._closed:
                raise RuntimeError("the writer is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tidelake-log-writer", daemon=True
                )
                self._thread.start()
            self._queue.append(request)
            self._wake.notify()
        return request.future

    def write(self, topic: str, values: Sequence[bytes]) -> None:
        """``submit`` and wait: returns once the records are durable."""
        self.submit(topic, values).result()

    def _take(self) -> list[_Request] | None:
        """The next group: queued requests that are still wanted, in order (None: closed)."""
        with self._wake:
            while not self._queue and not self._closed:
                self._wake.wait()
            group: list[_Request] = []
            records = size = 0
            while self._queue:
                request = self._queue[0]
                fits = records + len(request.values) <= MAX_GROUP_RECORDS
                if group and not (fits and size + request.size <= MAX_GROUP_BYTES):
                    break
                self._queue.popleft()
                if request.future.set_running_or_notify_cancel():
                    group.append(request)
                    records += len(request.values)
                    size += request.size
            return group if group or not self._closed else None

    def _run(self) -> None:
        while (group := self._take()) is not None:
            if group:
                self._commit(group)

    def _commit(self, group: list[_Request]) -> None:
        try:
            producer = self._connect()
            producer.produce_batches([(r.topic, r.values) for r in group])
            self.groups += 1
        except Exception as e:
            if len(group) > 1 and self._producer is not None and self._producer.atomic_batches:
                log.debug("group of %d requests failed (%s): writing each alone", len(group), e)
                for request in group:
                    self._commit_alone(request)
                return
            for request in group:
                request.future.set_exception(e)
            return
        for request in group:
            request.future.set_result(None)

    def _commit_alone(self, request: _Request) -> None:
        try:
            self._connect().produce_batches([(request.topic, request.values)])
            self.groups += 1
        except Exception as e:
            request.future.set_exception(e)
        else:
            request.future.set_result(None)

    def _connect(self) -> base.Producer:
        if self._producer is None:
            from tidelake.broker import connect

            self._broker = connect(self.url)
            self._producer = self._broker.producer()
        return self._producer

    def close(self) -> None:
        """Write what is queued, stop the writer thread, close the connection."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        if self._producer is not None:
            self._producer.close()
        if self._broker is not None:
            self._broker.close()
        self._broker = self._producer = None
        with self._wake:  # a later submit starts again (an app's lifespan may run twice)
            self._thread, self._closed = None, False


__all__ = ["MAX_GROUP_BYTES", "MAX_GROUP_RECORDS", "Writer"]
