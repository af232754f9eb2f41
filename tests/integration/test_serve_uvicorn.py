"""The API through a real uvicorn server process on a random loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import Popen

import httpx
import pyarrow as pa
import pytest

from tidelake.config import Pipeline, load
from tidelake.errors import ConfigError
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.serve.server import check_bind, is_loopback, serve
from tidelake.sinks.lake import LakeSink, LakeSinkConfig

TOKEN = "integration-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PIPELINE = (
    "name: live\nflows: {}\nserve: {ingest: [live.in]}\n"
    "queries:\n  total: SELECT count(*) AS n FROM events\n"
)
SERVER = """
import sys
from tidelake.config import load
from tidelake.serve.engine import Limits
from tidelake.serve.server import serve
serve(load(sys.argv[1]), "127.0.0.1", int(sys.argv[2]), limits=Limits(timeout=2.0))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lake(root: Path) -> Pipeline:
    (root / "pipeline.yaml").write_text(PIPELINE)
    pipeline = load(root / "pipeline.yaml")
    ctx = FlowContext(
        flow="load",
        pipeline=pipeline,
        metrics=FlowMetrics("load"),
        broker_factory=lambda: None,  # type: ignore[arg-type,return-value]
    )
    sink = LakeSink(LakeSinkConfig.model_validate({"type": "lake", "table": "events"}))
    sink.open(ctx)
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    sink.write(
        pa.table(
            {
                "id": pa.array(range(1000), pa.int64()),
                "ts": pa.array(
                    [t0 + timedelta(seconds=i) for i in range(1000)], pa.timestamp("us")
                ),
                "v": [float(i) for i in range(1000)],
            }
        ),
        {},
    )
    sink.close()
    return pipeline


@contextmanager
def running_server(script: str, root: Path, env: dict[str, str]) -> Iterator[Popen[bytes]]:
    """``script`` serving ``root/pipeline.yaml`` on a free port (its argv 2), once /healthz
    answers; yields the process (``server_url(proc)`` is its address), terminated on exit."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(root / "pipeline.yaml"), str(port)],
        env=dict(os.environ, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def server_url(proc: Popen[bytes]) -> str:
    return f"http://127.0.0.1:{proc.args[-1]}"  # type: ignore[index]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("serve-live")
    _lake(root)
    with running_server(SERVER, root, {"TIDELAKE_API_TOKEN": TOKEN}) as proc:
        yield server_url(proc)


def test_real_server_requires_token_and_serves(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as c:
        assert c.get("/api/tables").status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/api/tables", headers={"Authorization": "Bearer nope"}).status_code == 401
        tables = c.get("/api/tables", headers=AUTH).json()
        assert [(t["name"], t["rows"]) for t in tables] == [("events", 1000)]
        r = c.post("/api/query", headers=AUTH, json={"sql": "SELECT sum(v) AS s FROM events"})
        assert r.json()["rows"] == [[499500.0]]
        assert c.get("/api/queries/total", headers=AUTH).json()["rows"] == [[1000]]
        ndjson = b"".join(b'{"n": %d}\n' % i for i in range(500))
        r = c.post(
            "/api/ingest/live.in",
            headers=AUTH | {"content-type": "application/x-ndjson"},
            content=ndjson,
        )
        assert r.json() == {"topic": "live.in", "accepted": 500}
        metrics = c.get("/metrics", headers=AUTH).text
        assert 'route="/api/ingest/{topic}",status="200"' in metrics
        assert 'route="/api/tables",status="401"' in metrics


def test_runaway_query_does_not_block_other_requests(server: str) -> None:
    runaway = (
        "SELECT count(*) FROM events a, events b, events c, events d "
        "WHERE a.v + b.v + c.v + d.v > -1"
    )
    with ThreadPoolExecutor(2) as pool, httpx.Client(base_url=server, timeout=30) as c:
        slow = pool.submit(c.post, "/api/query", headers=AUTH, json={"sql": runaway})
        time.sleep(0.3)
        started = time.monotonic()
        quick = c.post("/api/query", headers=AUTH, json={"sql": "SELECT max(id) FROM events"})
        assert quick.json()["rows"] == [[999]] and time.monotonic() - started < 1.5
        assert slow.result().status_code == 408


def test_refuses_public_bind_without_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDELAKE_API_TOKEN", raising=False)
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    pipeline = load(tmp_path / "pipeline.yaml")
    with pytest.raises(ConfigError, match="TIDELAKE_API_TOKEN"):
        serve(pipeline, "0.0.0.0", _free_port())
    check_bind("0.0.0.0", "kR7-q2ZxW9pLm4Tv8Yb3")
    for weak in ("a", "a-token", "aaaaaaaaaaaaaaaaaaaaaaaa"):
        with pytest.raises(ConfigError, match="weak TIDELAKE_API_TOKEN"):
            check_bind("0.0.0.0", weak)
    check_bind("127.0.0.1", "a")
    check_bind("127.0.0.1", None)
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.1.2.3")
