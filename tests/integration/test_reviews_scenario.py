"""The reviews scenario against a reference computed from the same inputs: app reviews
POSTed to the app (CDC of its table) and the review site's pages (crawled), redacted, in the
lake (current state and history), negative ones alerted; its dashboard's panels read right
(as results, and on embedded defaults as drawn in Chromium). The same pipeline file runs on
embedded defaults and, switched by environment variables, on PostgreSQL + Debezium + Kafka +
an S3 lake (``TIDELAKE_SKIP_CONNECT=1`` skips that run, ``TIDELAKE_SKIP_S3=1`` keeps its lake
on local disk)."""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from browser import free_port, wait_for
from real_infra import lake_env, parquet_files, release_cdc
from scenario_panels import read_drawn, read_panel
from scenario_run import run_until

from tidelake.config import load
from tidelake.demo import _Server
from tidelake.demo.reviews_app import app_review, create_app, post_traffic, site_review
from tidelake.lake import QueryEngine
from tidelake.runtime.runner import prepare_database
from tidelake.serve.dashboard.launch import launch, stop
from tidelake.sources.cdc.envelope import default_name
from tidelake.transforms.redact import Redact

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
APP, SITE = 60, 30
NEGATIVE = "nul|déçu|cassé|horrible|arnaque"
SKIP_CONNECT = os.environ.get("TIDELAKE_SKIP_CONNECT") == "1"
SKIP_S3 = os.environ.get("TIDELAKE_SKIP_S3") == "1"


@pytest.fixture(
    params=[
        "embedded",
        pytest.param(
            "debezium",
            marks=pytest.mark.skipif(SKIP_CONNECT, reason="TIDELAKE_SKIP_CONNECT=1"),
        ),
    ]
)
def infrastructure(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, unique: str, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """Embedded defaults, or the variables that move the same file to PostgreSQL (a fresh
    database), Debezium on Kafka Connect, Kafka and a fresh S3 bucket (names unique per run)."""
    if request.param == "embedded":
        yield {}
        return
    from tidelake import infra

    services = infra.up(["kafka", "postgres", "connect", *([] if SKIP_S3 else ["s3"])])
    database = request.getfixturevalue("postgres_url")
    name = f"reviews_{unique}"
    env = {
        "TIDELAKE_BROKER": services["kafka"],
        "TIDELAKE_DATABASE": database,
        "CDC_ENGINE": "debezium",
        "KAFKA_CONNECT": services["connect"],
        "PIPELINE_NAME": name,
        "CDC_TOPIC_PREFIX": f"r{unique}",
        **lake_env(services, unique, tmp_path, SKIP_S3),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    release_cdc("debezium", services["connect"], database, default_name(name, "capture"))


def _count(pipeline: object, sql: str) -> int:
    try:
        with QueryEngine(pipeline) as engine:  # type: ignore[arg-type]
            return int(engine.sql(sql).column(0)[0].as_py())
    except Exception:  # noqa: BLE001 - the table is not there yet
        return 0


def test_reviews_land_redacted_and_negative_ones_alert(
    infrastructure: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    shutil.copytree(ROOT / "scenarios" / "reviews", tmp_path / "reviews")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("REVIEWS_APP", url)
    monkeypatch.setenv("ALERTS_WEBHOOK", f"{url}/alerts")
    pipeline = load(tmp_path / "reviews" / "pipeline.yaml")
    prepare_database(pipeline)
    app = create_app(pipeline.url(pipeline.database), site_start=SITE, site_rate=0)
    server = _Server(app, port)
    server.start()
    server.wait_ready()
    try:
        post_traffic(url, threading.Event(), rate=0, limit=APP)
        refused = httpx.post(f"{url}/reviews", json=app_review(0) | {"rating": 9})
        assert refused.status_code == 422 and "rating" in refused.text  # pydantic said no
        inputs = [("app", r) for r in map(app_review, range(APP))]
        inputs += [("web", r) for r in map(site_review, range(SITE))]
        negative = sum(
            r["rating"] <= 2 or len(re.findall(NEGATIVE, r["text"].lower())) >= 2 for _, r in inputs
        )

        def done() -> bool:
            alerts = sum(len(b) for b in app.state.alerts.values())
            lake = _count(pipeline, "SELECT count(*) FROM lake.reviews")
            history = _count(pipeline, "SELECT count(*) FROM lake.reviews_history")
            return lake >= APP + SITE and history >= APP + SITE and alerts >= negative

        run_until(pipeline, done, timeout=180 if infrastructure else 90)
    finally:
        server.stop()

    redact = Redact(Redact.Config(type="redact", fields=["text"]))
    texts = redact(pa.table({"text": [r["text"] for _, r in inputs]})).column("text").to_pylist()
    expected = Counter(
        (source, r["product"], r["rating"], text)
        for (source, r), text in zip(inputs, texts, strict=True)
    )
    with QueryEngine(pipeline) as engine:
        rows = engine.sql("SELECT source, product, rating, text FROM lake.reviews").to_pylist()
        history = engine.sql("SELECT count(*) AS n FROM lake.reviews_history").to_pylist()
        results = {name: engine.sql(sql).to_pylist() for name, sql in pipeline.queries.items()}
        panels = {p.title: read_panel(p, engine, pipeline) for p in pipeline.dashboard}
    assert not any(panels.values()), panels  # types and order as a person reads them
    assert Counter((r["source"], r["product"], r["rating"], r["text"]) for r in rows) == expected
    assert not any("@" in r["text"] for r in rows)  # the e-mails customers pasted are gone
    assert history == [{"n": APP + SITE}]
    if "TIDELAKE_S3_ENDPOINT" in infrastructure:  # the lake's data is on the S3 server
        assert parquet_files(
            infrastructure["TIDELAKE_S3_ENDPOINT"], infrastructure["TIDELAKE_LAKE"]
        )
    assert sum(len(b) for b in app.state.alerts.values()) == negative  # each alert once

    share = {
        s: sum(r["rating"] <= 2 for src, r in inputs if src == s)
        / sum(src == s for src, _ in inputs)
        for s in ("app", "web")
    }
    assert {r["source"]: r["negative_share"] for r in results["negative_share"]} == {
        s: round(v, 3) for s, v in share.items()
    }
    assert sum(r["reviews"] for r in results["rating_trend"]) == APP + SITE
    assert results["negative_words"] and results["recurring_problems"]
    worst = results["recurring_problems"][0]
    assert worst["product"] in ("casque audio", "trottinette")

    if infrastructure:  # the drawing does not depend on where the data lives
        return
    browser = request.getfixturevalue("browser")
    dashboard = free_port()
    proc = launch(tmp_path / "reviews" / "pipeline.yaml", port=dashboard, refresh=30)
    try:
        url = f"http://127.0.0.1:{dashboard}"
        wait_for(lambda: httpx.get(f"{url}/_stcore/health").text == "ok", 120, "streamlit")
        browser.send("Page.navigate", url=url)
        read_drawn(browser, pipeline)
    finally:
        stop(proc)
