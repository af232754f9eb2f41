"""Every door bounded: /metrics labels, request bodies on every route, no Host reflection."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_serve_api import Lake, build_lake

from tidelake.serve.api import create_app
from tidelake.serve.bodies import MAX_OTHER_BODY


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    return build_lake(tmp_path_factory.mktemp("serve-doors"))


@pytest.fixture(scope="module")
def client(lake: Lake) -> Iterator[TestClient]:
    with TestClient(create_app(lake.pipeline, max_body=4096)) as c:
        yield c


def test_metrics_labels_stay_bounded(client: TestClient) -> None:
    def series_after(n: int, start: int) -> int:
        for i in range(start, start + n):
            client.request(f"X{i}", f"/api/nope-{i}")
            client.get(f"/api/tables/t{i}/rows")
            client.request("BREW", "/metrics")
        return len(client.get("/metrics").text.splitlines())

    series_after(10, 0)  # every kind of request once, /metrics itself included
    assert series_after(100, 10) == series_after(1000, 110), "/metrics grew by request"
    text = client.get("/metrics").text
    assert 'method="other",route="<unmatched>"' in text
    assert 'route="/api/tables/{name}/rows"' in text and "nope-" not in text and "X1" not in text


def test_every_route_bounds_its_body(client: TestClient) -> None:
    huge = "SELECT 1 -- " + "x" * (MAX_OTHER_BODY + 10)
    r = client.post("/api/query", json={"sql": huge})
    assert r.status_code == 413 and len(r.content) < 200, r.text[:200]
    r = client.post("/api/query", json={"sql": "SELECT 1 -- " + "y" * 200_000})
    assert r.status_code == 422 and "sql" in r.json()["detail"]
    assert len(r.content) < 500, "the refused body is not echoed"
    chunks = (b'{"a": "' + b"z" * 1000 + b'"}\n' for _ in range(10))  # streamed, no length
    r = client.post(
        "/api/ingest/t", content=chunks, headers={"content-type": "application/x-ndjson"}
    )
    assert r.status_code == 413
    r = client.post("/api/ingest/t", content=b"x" * 5000, headers={"content-length": "5000"})
    assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]


def test_host_is_not_reflected(client: TestClient) -> None:
    r = client.get("/api/tables/", headers={"host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 404, r.headers
    assert "evil" not in str(r.headers).lower() and "evil" not in r.text


def test_errors_read_as_written(client: TestClient) -> None:
    r = client.get("/api/tables/missing/rows")
    assert r.status_code == 404 and "GET /api/tables lists them" in r.json()["detail"]
