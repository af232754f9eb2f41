"""The HTTP API over a real lake, database, log and metrics dir (app called in-process)."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from tidelake.broker import connect
from tidelake.config import Pipeline, loads
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.serve.api import create_app
from tidelake.serve.engine import Limits
from tidelake.sinks.lake import LakeSink, LakeSinkConfig

T0 = datetime(2024, 5, 1, tzinfo=UTC)
ROWS = 300
TOKEN = "s3cret-token-for-tests"
PIPELINE = """
name: shop
flows: {}
serve: {ingest: ["ingest.*", bad, t]}
queries:
  by_kind: SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY kind
  broken: SELECT * FROM read_text('/etc/passwd')
"""


@dataclass
class Lake:
    pipeline: Pipeline
    root: Path
    canary: Path


def _no_broker() -> None:
    raise AssertionError("the lake sink must not need the broker")


def write_lake(pipeline: Pipeline, table: str, data: pa.Table) -> None:
    ctx = FlowContext(
        flow="load",
        pipeline=pipeline,
        metrics=FlowMetrics("load"),
        broker_factory=_no_broker,  # type: ignore[arg-type]
    )
    sink = LakeSink(LakeSinkConfig.model_validate({"type": "lake", "table": table}))
    sink.open(ctx)
    sink.write(data, {})
    sink.close()


def events(n: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "ts": pa.array([T0 + timedelta(minutes=i) for i in range(n)], pa.timestamp("us")),
            "kind": [("click", "view", "buy")[i % 3] for i in range(n)],
            "user": [f"u{i % 7}" for i in range(n)],
            "amount": [i * 0.5 for i in range(n)],
        }
    )


def build_lake(root: Path) -> Lake:
    pipeline = loads(PIPELINE, root / "pipeline.yaml")
    write_lake(pipeline, "events", events(ROWS))
    db = sqlite3.connect(pipeline.state_dir / "pipeline.db")
    db.execute("CREATE TABLE stock (sku TEXT, qty INTEGER)")
    db.executemany("INSERT INTO stock VALUES (?, ?)", [("apple", 3), ("pear", 5)])
    db.commit()
    db.close()
    metrics = pipeline.state_dir / "metrics"
    FlowMetrics("load", state="running", records_in=500, records_out=480, dead_letters=2,
                errors=1, lag=20, last_checkpoint=time.time() - 5,
                started=time.time() - 10, counts={"redacted_email": 7}).save(metrics)  # fmt: skip
    canary = root / "canary.csv"
    canary.write_text("CANARY_7f3a9,secret\n")
    return Lake(pipeline, root, canary)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    return build_lake(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def client(lake: Lake) -> Iterator[TestClient]:
    with TestClient(create_app(lake.pipeline)) as c:
        yield c


def test_tables_lists_lake_and_db_tables_with_freshness(client: TestClient) -> None:
    r = client.get("/api/tables")
    assert r.status_code == 200
    by_name = {t["name"]: t for t in r.json()}
    events_ = by_name["events"]
    assert events_["kind"] == "lake" and events_["rows"] == ROWS
    assert [c["name"] for c in events_["columns"]] == ["id", "ts", "kind", "user", "amount"]
    assert events_["partition_spec"] == "day(ts)" and events_["partitions"] == 1
    assert 0 <= events_["freshness_seconds"] < 600 and events_["last_updated"]
    assert by_name["stock"]["kind"] == "db" and by_name["stock"]["rows"] == 2


def test_table_detail_has_history_and_404_for_unknown(client: TestClient) -> None:
    detail = client.get("/api/tables/events").json()
    assert detail["rows"] == ROWS
    assert detail["history"][0]["added_rows"] == ROWS
    assert detail["history"][0]["flow"] == "load"
    r = client.get("/api/tables/nope")
    assert r.status_code == 404 and "GET /api/tables" in r.json()["detail"]


def test_rows_filters_orders_and_pages(client: TestClient) -> None:
    where = [
        {"column": "kind", "op": "=", "value": "buy"},
        {"column": "id", "op": ">=", "value": 100},
        {"column": "user", "op": "in", "value": ["u1", "u2", "u3"]},
    ]
    r = client.get(
        "/api/tables/events/rows",
        params={"where": json.dumps(where), "order_by": "-id", "limit": 5, "offset": 1},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    expected = [
        i for i in range(ROWS - 1, 99, -1) if i % 3 == 2 and f"u{i % 7}" in ("u1", "u2", "u3")
    ]
    assert [row[0] for row in body["rows"]] == expected[1:6]
    assert body["truncated"] is True and body["row_count"] == 5

    like = client.get(
        "/api/tables/events/rows",
        params=[("where", json.dumps({"column": "user", "op": "like", "value": "u6%"})),
                ("where", json.dumps({"column": "amount", "op": "<", "value": 10})),
                ("order_by", "id:asc")],
    ).json()  # fmt: skip
    assert [row[0] for row in like["rows"]] == [6, 13]

    nulls = client.get(
        "/api/tables/events/rows", params={"where": '[{"column": "kind", "op": "is_null"}]'}
    ).json()
    assert nulls["rows"] == []
    stock = client.get("/api/tables/stock/rows", params={"order_by": "-qty"}).json()
    assert stock["rows"] == [["pear", 5], ["apple", 3]]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"where": '[{"column": "nope", "op": "=", "value": 1}]'}, "unknown column"),
        ({"where": '[{"column": "id", "op": "between", "value": 1}]'}, "op"),
        ({"where": '[{"column": "id", "op": "in", "value": []}]'}, "non-empty"),
        ({"where": '[{"column": "id", "op": "is_null", "value": 3}]'}, "no value"),
        ({"where": "not json"}, "not JSON"),
        ({"order_by": "id; DROP TABLE events"}, "unknown column"),
        ({"limit": 10_001}, "less than or equal"),
    ],
)
def test_rows_rejects_bad_requests(
    client: TestClient, params: dict[str, object], fragment: str
) -> None:
    r = client.get("/api/tables/events/rows", params=params)  # type: ignore[arg-type]
    assert r.status_code == 422
    assert fragment in r.text


def test_query_returns_rows_and_truncates(client: TestClient) -> None:
    r = client.post(
        "/api/query",
        json={
            "sql": "SELECT kind, count(*) AS n, sum(amount) AS total "
            "FROM events GROUP BY kind ORDER BY kind;"
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["name"] for c in body["columns"]] == ["kind", "n", "total"]
    assert body["rows"] == [["buy", 100, 7525.0], ["click", 100, 7425.0], ["view", 100, 7475.0]]
    assert body["truncated"] is False and body["elapsed_ms"] > 0

    capped = client.post(
        "/api/query", json={"sql": "SELECT id FROM events ORDER BY id", "limit": 7}
    )
    assert capped.json()["row_count"] == 7 and capped.json()["truncated"] is True
    assert [r[0] for r in capped.json()["rows"]] == list(range(7))

    joined = client.post(
        "/api/query",
        json={
            "sql": "WITH s AS (SELECT * FROM db.stock) SELECT sku, qty FROM s ORDER BY sku -- end"
        },
    )
    assert joined.json()["rows"] == [["apple", 3], ["pear", 5]]


def test_query_time_travel_with_as_of(tmp_path: Path) -> None:
    lake = build_lake(tmp_path)
    with TestClient(create_app(lake.pipeline)) as c:
        first = c.get("/api/tables/events").json()["history"][0]["snapshot_id"]
        write_lake(lake.pipeline, "events", events(10))
        now = c.post("/api/query", json={"sql": "SELECT count(*) FROM events"}).json()
        then = c.post("/api/query", json={"sql": "SELECT count(*) FROM events", "as_of": first})
        assert now["rows"] == [[ROWS + 10]]
        assert then.json()["rows"] == [[ROWS]]


def test_saved_queries(client: TestClient) -> None:
    listed = client.get("/api/queries").json()
    assert {q["name"] for q in listed} == {"by_kind", "broken"}
    r = client.get("/api/queries/by_kind")
    assert r.status_code == 200 and r.json()["rows"] == [
        ["buy", 100],
        ["click", 100],
        ["view", 100],
    ]
    assert client.get("/api/queries/by_kind", params={"limit": 1}).json()["truncated"] is True
    assert client.get("/api/queries/broken").status_code == 400, "saved SQL is guarded too"
    assert client.get("/api/queries/missing").status_code == 404


def test_ingest_object_array_and_ndjson_reach_the_log(lake: Lake, client: TestClient) -> None:
    topic = "ingest.test-1"
    assert client.post(f"/api/ingest/{topic}", json={"a": 1}).json() == {
        "topic": topic,
        "accepted": 1,
    }
    assert (
        client.post(f"/api/ingest/{topic}", json=[{"a": 2}, {"a": 3, "b": "x"}]).json()["accepted"]
        == 2
    )
    ndjson = b'{"a": 4}\r\n\n{"a": "mixed type"}\n{"a": 6, "nested": {"k": [1]}}\n'
    r = client.post(
        f"/api/ingest/{topic}", content=ndjson, headers={"content-type": "application/x-ndjson"}
    )
    assert r.json()["accepted"] == 3

    broker = connect(lake.pipeline.url(lake.pipeline.broker))
    consumer = broker.consumer("check", [topic])
    got = []
    for _ in range(20):
        got += consumer.poll(100, 0.2).values
        if len(got) >= 6:
            break
    consumer.close()
    assert [json.loads(v or b"null")["a"] for v in got] == [1, 2, 3, 4, "mixed type", 6]


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b'{"a": 1}\n[1, 2]\n', "application/x-ndjson", "line 2: expected a JSON object"),
        (b'{"a": 1}\n{"a": \n', "application/x-ndjson", "line 2: invalid JSON"),
        (b"[1, 2]", "application/json", "item 0"),
        (b'"text"', "application/json", "got a string"),
        (b"{nope", "application/json", "not valid JSON"),
    ],
)
def test_ingest_rejects_non_objects(
    client: TestClient, body: bytes, content_type: str, fragment: str
) -> None:
    r = client.post("/api/ingest/bad", content=body, headers={"content-type": content_type})
    assert r.status_code == 400 and fragment in r.json()["detail"]


def test_ingest_validates_topic_and_size(lake: Lake) -> None:
    with TestClient(create_app(lake.pipeline, max_body=1000)) as c:
        assert c.post("/api/ingest/__internal", json={"a": 1}).status_code == 422
        assert c.post("/api/ingest/a b", json={"a": 1}).status_code == 422
        big = b'{"a": "' + b"x" * 2000 + b'"}'
        r = c.post("/api/ingest/t", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_flows_report_state_lag_and_checkpoint_age(client: TestClient) -> None:
    (flow,) = client.get("/api/flows").json()
    assert flow["flow"] == "load" and flow["state"] == "running"
    assert (flow["records_out"], flow["lag"], flow["errors"], flow["dead_letters"]) == (
        480,
        20,
        1,
        2,
    )
    assert 4 <= flow["last_checkpoint_age_seconds"] < 600
    assert flow["rate_out"] > 0


def test_metrics_exposition(client: TestClient) -> None:
    client.get("/api/tables")
    text = client.get("/metrics").text
    assert 'tidelake_flow_records_out_total{flow="load"} 480.0' in text
    assert 'tidelake_flow_lag{flow="load"} 20.0' in text
    assert 'tidelake_flow_count_total{flow="load",name="redacted_email"} 7.0' in text
    assert 'tidelake_flow_state{flow="load",state="running"} 1.0' in text
    assert 'tidelake_flow_last_checkpoint_age_seconds{flow="load"}' in text
    assert 'tidelake_api_requests_total{method="GET",route="/api/tables",status="200"}' in text
    assert (
        'tidelake_api_request_duration_seconds_bucket{le="+Inf",method="GET",route="/api/tables"}'
        in text
    )
    for line in text.splitlines():
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2


def test_token_required_everywhere_when_configured(lake: Lake) -> None:
    with TestClient(create_app(lake.pipeline, token=TOKEN)) as c:
        paths = [("get", "/api/tables"), ("get", "/api/tables/events"),
                 ("get", "/api/tables/events/rows"), ("post", "/api/query"),
                 ("get", "/api/queries"), ("get", "/api/queries/by_kind"),
                 ("post", "/api/ingest/t"), ("get", "/api/flows"), ("get", "/metrics")]  # fmt: skip
        for method, path in paths:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                r = c.request(method, path, headers=headers, json={"sql": "SELECT 1"})
                assert r.status_code == 401, (method, path, headers)
                assert TOKEN not in r.text and r.headers["www-authenticate"].startswith("Bearer")
        ok = c.get("/api/tables", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200


def test_openapi_documents_every_endpoint(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        "/api/tables", "/api/tables/{name}", "/api/tables/{name}/rows", "/api/query",
        "/api/queries", "/api/queries/{name}", "/api/ingest/{topic}", "/api/flows", "/metrics",
    }  # fmt: skip
    assert "QueryResult" in spec["components"]["schemas"]


def test_engine_limits_are_applied(lake: Lake) -> None:
    app = create_app(lake.pipeline, limits=Limits(memory_limit="256MB", threads=1))
    with TestClient(app) as c:
        c.get("/api/tables")
        settings = app.state.tidelake.pool.call(lambda e: e.settings())
    assert settings["enable_external_access"] == "false"
    assert settings["lock_configuration"] == "true"
    assert settings["autoload_known_extensions"] == "false"
    assert settings["autoinstall_known_extensions"] == "false"
    assert settings["python_enable_replacements"] == "false"
    assert settings["threads"] == "1"
    assert settings["memory_limit"].startswith("244") or "256" in settings["memory_limit"]
    assert settings["allowed_directories"] == "[]"  # not even the lake: tables are Arrow


def test_ndjson_errors_name_the_real_line(client: TestClient) -> None:
    body = b'{"a": 1}\n\n\n{"a": 2}\n7\n'
    r = client.post("/api/ingest/t", content=body, headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 400 and r.json()["detail"].startswith(
        "line 5: expected a JSON object, got a number;"
    )


def test_rows_of_a_name_in_both_stores_need_its_prefix_and_internal_tables_are_hidden(
    tmp_path: Path,
) -> None:
    pipeline = loads(PIPELINE, tmp_path / "pipeline.yaml")
    write_lake(pipeline, "events", events(5))
    db = sqlite3.connect(pipeline.state_dir / "pipeline.db")
    db.execute("CREATE TABLE events (id INTEGER, note TEXT)")
    db.execute("CREATE TABLE _tidelake_changes (seq INTEGER)")
    db.executemany("INSERT INTO events VALUES (?, ?)", [(1, "db"), (2, "db")])
    db.commit()
    db.close()
    with TestClient(create_app(pipeline)) as c:
        assert c.get("/api/tables/lake.events/rows").json()["row_count"] == 5
        from_db = c.get("/api/tables/db.events/rows").json()
        assert [col["name"] for col in from_db["columns"]] == ["id", "note"]
        assert from_db["row_count"] == 2
        bare = c.get("/api/tables/events/rows")
        assert bare.status_code == 409
        assert "lake.events or db.events" in bare.json()["detail"]
        query = c.post("/api/query", json={"sql": "SELECT count(*) FROM db.events"})
        assert query.json()["rows"] == [[2]]
        names = [t["name"] for t in c.get("/api/tables").json()]
        assert sorted(names) == ["events", "events"], names


def test_docs_pages_load_their_assets_from_the_app_itself(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html.text)
        assert assets, html.text
        for url in assets:
            assert url.startswith("/"), f"{page} loads {url} from another host (blank offline)"
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 10_000, url
