"""Group commit (``broker.writer``): every request lands once, contiguous and in order, even
when requests share a log transaction and one of them fails; through the API too."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from tidelake.broker.embedded import EmbeddedBroker
from tidelake.broker.writer import Writer
from tidelake.config import loads
from tidelake.errors import ConnectorError
from tidelake.serve.api import create_app


def _values(topic_path: Path, topic: str) -> list[dict[str, int]]:
    with sqlite3.connect(topic_path) as conn:
        rows = conn.execute(
            "SELECT value FROM messages WHERE topic = ? ORDER BY partition, offset", (topic,)
        ).fetchall()
    return [orjson.loads(v) for (v,) in rows]


def _request(client: int, seq: int, n: int) -> list[bytes]:
    return [orjson.dumps({"c": client, "r": seq, "i": i}) for i in range(n)]


@contextmanager
def log_locked(path: Path) -> Iterator[None]:
    """Another connection holds the log's write lock (as a busy writer in another process
    would): the writer's transaction waits, and requests queue up behind it meanwhile."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("COMMIT")
        conn.close()


def _wait_queued(writer: Writer, n: int) -> None:
    """Until ``n`` requests wait in the queue (the writer took the others)."""
    deadline = time.monotonic() + 30
    while len(writer._queue) != n:
        assert time.monotonic() < deadline, f"{len(writer._queue)} queued, not {n}"
        time.sleep(0.01)


def test_queued_requests_share_one_transaction_each_landing_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    EmbeddedBroker(str(path)).create_topic("t")
    writer = Writer(f"embedded:///{path}")
    try:
        first = writer.submit("t", _request(0, 0, 3))
        _wait_queued(writer, 0)  # the writer took it alone
        with log_locked(path):
            futures: list[Future[None]] = [
                writer.submit("t", _request(c, 0, 50)) for c in range(1, 21)
            ]
            time.sleep(0.2)
        first.result(30)
        for f in futures:
            f.result(30)
        assert writer.groups <= 3  # the first request, then the 20 queued (maybe split once)
    finally:
        writer.close()
    rows = _values(path, "t")
    assert len(rows) == 3 + 20 * 50
    keys = [(r["c"], r["r"], r["i"]) for r in rows]
    assert len(set(keys)) == len(keys)  # exactly once
    assert keys[:3] == [(0, 0, i) for i in range(3)]
    for c in range(1, 21):  # each request contiguous and in its own order, requests FIFO
        assert keys[3 + (c - 1) * 50 : 3 + c * 50] == [(c, 0, i) for i in range(50)]


def test_a_failing_request_in_a_group_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    broker = EmbeddedBroker(str(path))
    broker.create_topic("t")
    broker.create_topic("compacted", config={"cleanup.policy": "compact"})
    writer = Writer(f"embedded:///{path}")
    try:
        writer.write("t", _request(0, 0, 1))  # connected, topics known
        with log_locked(path):
            good = [writer.submit("t", _request(1, r, 10)) for r in range(3)]
            bad = writer.submit("compacted", _request(2, 0, 10))  # unkeyed: refused by the log
            good += [writer.submit("t", _request(1, r, 10)) for r in range(3, 6)]
            time.sleep(0.2)
        with pytest.raises(ConnectorError, match="only takes keyed records"):
            bad.result(30)
        for f in good:
            f.result(30)
    finally:
        writer.close()
    assert _values(path, "compacted") == []
    keys = [(r["c"], r["r"], r["i"]) for r in _values(path, "t")]
    assert keys == [(0, 0, 0)] + [(1, r, i) for r in range(6) for i in range(10)]


def test_a_request_cancelled_while_queued_lands_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    EmbeddedBroker(str(path)).create_topic("t")
    writer = Writer(f"embedded:///{path}")
    try:
        writer.write("t", _request(0, 0, 1))
        with log_locked(path):
            taken = writer.submit("t", _request(1, 0, 5))
            _wait_queued(writer, 0)  # the writer took it and waits for the lock
            queued = writer.submit("t", _request(2, 0, 5))
            assert queued.cancel()
        taken.result(30)
        with pytest.raises(CancelledError):
            queued.result(0)
    finally:
        writer.close()
    assert [r["c"] for r in _values(path, "t")] == [0] + [1] * 5


def test_concurrent_http_ingest_lands_every_record_once_in_request_order(tmp_path: Path) -> None:
    pipeline = loads("name: p\nflows: {}\nserve: {ingest: [in]}\n", tmp_path / "p.yaml")
    clients, requests, n = 12, 8, 40
    with TestClient(create_app(pipeline)) as c:

        def client(k: int) -> None:
            for r in range(requests):
                body = b"\n".join(_request(k, r, n))
                answer = c.post(
                    "/api/ingest/in", content=body, headers={"content-type": "application/x-ndjson"}
                )
                assert answer.json() == {"topic": "in", "accepted": n}, answer.text

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
    rows = _values(tmp_path / ".tidelake" / "log.db", "in")
    assert len(rows) == clients * requests * n
    starts = range(0, len(rows), n)
    chunks = [[(x["c"], x["r"], x["i"]) for x in rows[s : s + n]] for s in starts]
    for chunk in chunks:  # every request contiguous, in its own order
        k, r = chunk[0][:2]
        assert chunk == [(k, r, i) for i in range(n)]
    for k in range(clients):  # a client's requests in the order it sent them, each once
        assert [ch[0][1] for ch in chunks if ch[0][0] == k] == list(range(requests))


def test_a_log_that_cannot_open_fails_every_waiter_and_hangs_none(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    writer = Writer(f"embedded:///{tmp_path / 'file' / 'log.db'}")
    try:
        for f in [writer.submit("t", _request(0, r, 2)) for r in range(3)]:
            with pytest.raises(OSError):
                f.result(30)
        with pytest.raises(OSError):
            writer.write("t", _request(0, 3, 2))
    finally:
        writer.close()
