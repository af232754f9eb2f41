"""The four-source data lake scenario: generators -> four topics -> four lake tables, then the
reference document's analyses as saved queries."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from tidelake.config import load
from tidelake.lake import QueryEngine
from tidelake.runtime.runner import run_flows

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("transactions", "web_logs", "social_posts", "ad_campaigns")
LIMIT = 3000


@pytest.mark.integration
def test_datalake_lands_four_tables_and_answers_the_analyses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(
        ROOT / "scenarios" / "datalake",
        tmp_path / "datalake",
        ignore=shutil.ignore_patterns(".tidelake"),
    )
    monkeypatch.setenv("DATALAKE_LIMIT", str(LIMIT))
    monkeypatch.setenv("DATALAKE_RATE", "0")
    pipeline = load(tmp_path / "datalake" / "pipeline.yaml")
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_flows(pipeline, list(pipeline.flows), stop)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    counts: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not errors:
            with QueryEngine(pipeline) as engine:
                present = {t.name for t in engine.tables() if t.kind == "lake"}
                counts = {
                    t: engine.sql(f"SELECT count(*) AS n FROM {t}").column("n")[0].as_py()
                    for t in TABLES
                    if t in present
                }
            if len(counts) == 4 and all(n >= LIMIT for n in counts.values()):
                break
            time.sleep(1)
    finally:
        stop.set()
        worker.join(60)
    assert not errors, errors
    assert counts == dict.fromkeys(TABLES, LIMIT)

    with QueryEngine(pipeline) as engine:
        results = {name: engine.sql(sql).to_pylist() for name, sql in pipeline.queries.items()}
    assert sum(r["sales"] for r in results["sales_by_product"]) == LIMIT
    assert results["http_errors"] and all(r["status"] >= 400 for r in results["http_errors"])
    assert all(0 <= r["ctr"] <= 1 for r in results["campaign_ctr"])
    assert sum(r["posts"] for r in results["engagement"]) == LIMIT
