"""The four-source data lake scenario: generators -> four topics -> four lake tables, then the
reference document's analyses as saved queries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from scenario_run import run_until

from tidelake.config import load
from tidelake.lake import QueryEngine

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
    counts: dict[str, int] = {}

    def landed() -> bool:
        with QueryEngine(pipeline) as engine:
            present = {t.name for t in engine.tables() if t.kind == "lake"}
            counts.update(
                {
                    t: engine.sql(f"SELECT count(*) AS n FROM {t}").column("n")[0].as_py()
                    for t in TABLES
                    if t in present
                }
            )
        return len(counts) == 4 and all(n >= LIMIT for n in counts.values())

    run_until(pipeline, landed)
    assert counts == dict.fromkeys(TABLES, LIMIT)

    with QueryEngine(pipeline) as engine:
        results = {name: engine.sql(sql).to_pylist() for name, sql in pipeline.queries.items()}
    assert sum(r["sales"] for r in results["sales_by_product"]) == LIMIT
    assert results["http_errors"] and all(r["status"] >= 400 for r in results["http_errors"])
    assert all(0 <= r["ctr"] <= 1 for r in results["campaign_ctr"])
    assert sum(r["posts"] for r in results["engagement"]) == LIMIT
