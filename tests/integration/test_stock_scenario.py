"""The wholesaler's stock scenario: opening inventory from a CSV plus live operations through
the log into SQLite; every product's stock, computed by the saved query, equals a reference
computed here from the same inputs."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest
from scenario_run import run_until, sqlite_value

from tidelake.config import load
from tidelake.lake import QueryEngine
from tidelake.sources.generator import generate

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 3000


def _reference(scenario: Path) -> dict[str, int]:
    stock: Counter[str] = Counter()
    with (scenario / "operations.csv").open() as f:
        for row in csv.DictReader(f):
            stock[row["product_id"]] += int(row["operation_qt"])
    ops = generate("warehouse_ops", 0, LIMIT, 7).to_pylist()
    for op in ops:
        sign = -1 if op["op"] == "ship" else 1
        stock[op["product_id"]] += sign * op["quantity"]
    return dict(stock)


@pytest.mark.integration
def test_stock_levels_follow_inventory_and_operations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = tmp_path / "stock"
    shutil.copytree(ROOT / "scenarios" / "stock", scenario)
    monkeypatch.setenv("STOCK_LIMIT", str(LIMIT))
    monkeypatch.setenv("STOCK_RATE", "0")
    pipeline = load(scenario / "pipeline.yaml")
    want = _reference(scenario)
    db = scenario / ".tidelake" / "stock.db"
    run_until(pipeline, lambda: sqlite_value(db, "operations") >= 500 + LIMIT)
    assert sqlite_value(db, "operations") == 500 + LIMIT

    with QueryEngine(pipeline) as engine:
        levels = engine.sql(pipeline.queries["stock_levels"]).to_pylist()
        by_type = engine.sql(pipeline.queries["operations_by_type"]).to_pylist()
        out = engine.sql(pipeline.queries["out_of_stock"]).to_pylist()
        panels = {p.title: engine.sql(p.sql) for p in pipeline.dashboard}
    assert {r["product_id"]: r["stock"] for r in levels} == want
    assert sum(r["operations"] for r in by_type) == LIMIT
    assert {r["product_id"] for r in out} == {p for p, s in want.items() if s <= 0}
    for title, rows in panels.items():
        assert rows.num_rows, title
        panel = next(p for p in pipeline.dashboard if p.title == title)
        ys = panel.y if isinstance(panel.y, list) else [panel.y]
        assert {panel.x, *ys} <= set(rows.column_names), title
