"""Limits that hold where the memory is: each query runs in a worker process that is killed
at its time limit or memory ceiling, results are bounded in bytes, engines in number."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from test_serve_api import ROWS, Lake, build_lake

from tidelake.serve.api import create_app
from tidelake.serve.engine import EnginePool, Limits
from tidelake.serve.worker import rss_bytes

LIMITS = Limits(memory_limit="256MB", timeout=2.0, engines=2, max_bytes=16 * 2**20, wait=0.3)
RUNAWAYS = [  # issue 10: each drove the server to GBs of RSS or ran 18-27 s past a 10 s limit
    "SELECT [repeat('z', 100000) FOR i IN range(50000)]",
    "SELECT count(*) FROM (SELECT unnest(range(100000000)))",
    "SELECT repeat('x', 200000000) AS s FROM range(4)",
    "SELECT count(DISTINCT (a.range, repeat('x', 200))) FROM range(30000000) a",
    "SELECT count(*) FROM range(1000000000000) a, range(1000000) b",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    return build_lake(tmp_path_factory.mktemp("serve-limits"))


@pytest.fixture(scope="module")
def client(lake: Lake) -> Iterator[TestClient]:
    with TestClient(create_app(lake.pipeline, limits=LIMITS)) as c:
        yield c


def _pool(client: TestClient) -> EnginePool:
    pool: EnginePool = client.app.state.tidelake.pool  # type: ignore[attr-defined]
    return pool


def _warm(pool: EnginePool) -> None:
    """Wait until every worker is up (a killed one is replaced in the background)."""
    for _ in range(1200):
        if pool._idle.qsize() == LIMITS.engines:
            return
        time.sleep(0.05)
    raise AssertionError("query workers did not come back")


def _normal(client: TestClient) -> None:
    r = client.post("/api/query", json={"sql": "SELECT count(*) FROM events"})
    assert r.status_code == 200 and r.json()["rows"] == [[ROWS]], r.text


@pytest.mark.parametrize("sql", RUNAWAYS)
def test_runaway_ends_within_its_limits(client: TestClient, sql: str) -> None:
    pool = _pool(client)
    _warm(pool)
    ceilings = {w.proc.pid: w.ceiling for w in pool._all}
    peaks = dict.fromkeys(ceilings, 0)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in ceilings:
                peaks[pid] = max(peaks[pid], rss_bytes(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    r = client.post("/api/query", json={"sql": sql})
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    assert r.status_code in (408, 413, 422), (sql, r.status_code, r.text)
    assert "limit" in r.json()["detail"] or "Memory" in r.json()["detail"], r.text
    assert elapsed < LIMITS.timeout + 1, f"{sql}: answered after {elapsed:.2f} s"
    for pid, peak in peaks.items():
        assert peak <= ceilings[pid] * 1.2, f"{sql}: worker RSS {peak >> 20} MB"
    _warm(pool)
    _normal(client)


def test_results_are_bounded_in_bytes_and_rows(client: TestClient) -> None:
    _warm(_pool(client))
    r = client.post("/api/query", json={"sql": "SELECT repeat('x', 1000000) AS s FROM range(40)"})
    assert r.status_code == 413 and "larger than 16 MB" in r.json()["detail"], r.text
    r = client.post("/api/query", json={"sql": "SELECT 1", "limit": LIMITS.max_rows + 1})
    assert r.status_code == 422 and f"at most {LIMITS.max_rows} rows" in r.json()["detail"]
    _normal(client)


def test_more_concurrent_queries_than_engines_get_503(client: TestClient) -> None:
    _warm(_pool(client))
    slow = "SELECT count(*) FROM range(1000000000000) a, range(1000000) b"
    with ThreadPoolExecutor(3) as ex:
        answers = list(ex.map(lambda _: client.post("/api/query", json={"sql": slow}), range(3)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [408, 408, 503], [r.text for r in answers]
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
    _warm(_pool(client))
    _normal(client)
