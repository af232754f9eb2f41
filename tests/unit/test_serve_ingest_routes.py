"""Ingest writes only where a flow reads or writes, never into CDC or dead-letter topics."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
from fastapi.testclient import TestClient

from tidelake.config import loads
from tidelake.serve.api import create_app
from tidelake.serve.engine import Limits
from tidelake.serve.ingest import Routes

PIPELINE = """
name: shop
flows:
  orders:
    source: {type: topic, topic: [orders, returns]}
    sink: {type: table, table: orders}
  enrich:
    source: {type: topic, topic: orders}
    sink: {type: topic, topic: "orders.{region}"}
  capture:
    source: {type: cdc, engine: sqlite, tables: [items], topic_prefix: shopdb}
    sink: {type: topic, topic: "cdc.{table}"}
  items_land:
    source: {type: topic, topic: changes.items}
    transforms: [{type: unwrap}]
    sink: {type: table, table: items_copy}
    dead_letter: items.bad
"""


def test_default_scope_is_what_flows_use_minus_cdc_and_dead_letters(tmp_path: Path) -> None:
    routes = Routes(loads(PIPELINE, tmp_path / "p.yaml"))
    for topic in ("orders", "returns", "orders.eu"):
        assert routes.check(topic) is None, topic
    never = ("cdc.items", "shopdb.main.items", "changes.items", "items.bad", "shop.orders.dlq")
    for topic in never:
        status, detail = routes.check(topic) or (0, "")
        assert status == 403 and "serve: {ingest" in detail, (topic, status)
    status, detail = routes.check("nobody.reads") or (0, "")
    assert status == 404 and "no flow reads or writes topic 'nobody.reads'" in detail
    assert "orders" in detail


def test_configured_scope_replaces_the_default(tmp_path: Path) -> None:
    text = PIPELINE + 'serve: {ingest: ["landing.*", cdc.items]}\n'
    routes = Routes(loads(text, tmp_path / "p.yaml"))
    assert routes.check("landing.x") is None and routes.check("cdc.items") is None
    assert (routes.check("orders") or (0,))[0] == 403


def test_http_ingest_refuses_unrouted_topics_and_non_records(tmp_path: Path) -> None:
    with TestClient(create_app(loads(PIPELINE, tmp_path / "p.yaml"))) as c:
        r = c.post("/api/ingest/nobody.reads", json={"a": 1})
        assert r.status_code == 404 and "no flow reads or writes" in r.json()["detail"]
        assert c.post("/api/ingest/shop.orders.dlq", json={"a": 1}).status_code == 403
        r = c.post("/api/ingest/orders", content=b"1, 2, 3", headers={"content-type": "text/csv"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
        r = c.post("/api/ingest/orders", json=[{"a": 1}, "b"])
        assert r.status_code == 400 and "item 1: expected a JSON object" in r.json()["detail"]
        assert c.post("/api/ingest/orders", json=[{"a": 1}]).json()["accepted"] == 1


def test_ingest_beyond_its_byte_budget_is_503(tmp_path: Path) -> None:
    """In-flight bodies hold at most ``ingests * max_body`` bytes by their Content-Length."""
    app = create_app(loads(PIPELINE, tmp_path / "p.yaml"), limits=Limits(ingests=1), max_body=100)
    release = threading.Event()
    append = app.state.tidelake.append

    async def slow_append(topic: str, values: list[bytes]) -> None:  # the log is slow today
        await asyncio.to_thread(release.wait, 30)
        await append(topic, values)

    app.state.tidelake.append = slow_append
    held = orjson.dumps({"a": 1, "pad": "x" * 50})  # 60 of the 100 bytes
    with TestClient(app) as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(c.post, "/api/ingest/orders", content=held)
        time.sleep(0.5)
        r = c.post("/api/ingest/orders", content=held)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert c.post("/api/ingest/orders", json={"a": 2}).json()["accepted"] == 1  # 8 bytes fit
        release.set()
        assert first.result().json()["accepted"] == 1
        assert c.post("/api/ingest/orders", content=held).json()["accepted"] == 1
