"""Every scenario's dashboard, read the way a person reads it.

The four scenarios run briefly side by side (``scenario_panels``); then, for every panel:
its query runs without error and returns rows, numbers are drawn on a quantitative axis
(the browser receives numbers, not text), times on a temporal axis, bars appear largest
first unless the query orders them, and a bar chart has a readable number of bars. The
same run then opens each dashboard in Chromium and checks the rendered charts' scales.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from browser import Browser, find_chromium, free_port, wait_for
from scenario_panels import SCENARIOS, running_scenarios

from tidelake.config import Panel, Pipeline
from tidelake.lake import QueryEngine
from tidelake.serve.dashboard import charts
from tidelake.serve.dashboard.launch import launch, stop

pytestmark = pytest.mark.integration
READABLE_BARS = 25


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Pipeline]]:
    with running_scenarios(tmp_path_factory.mktemp("scenarios"), free_port()) as pipelines:
        yield pipelines


def _number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _shown_bars(chart: charts.Chart) -> list[tuple[Any, float]]:
    """(x, y) of the bars left to right, as Vega-Lite orders a discrete x axis."""
    x = chart.spec["encoding"]["x"]
    y = chart.spec["encoding"]["y"]["field"]
    rows = [(r[x["title"]], r[y]) for r in chart.data.to_pylist()]
    sort = x.get("sort", "ascending")  # Vega-Lite's default: ascending by the x value
    if sort == "-y":
        return sorted(rows, key=lambda r: -r[1])
    if sort is None:
        return rows
    return sorted(rows, key=lambda r: r[0])


def read_panel(panel: Panel, engine: QueryEngine, pipeline: Pipeline) -> list[str]:
    """What is wrong with one panel as a person sees it (empty when it reads right)."""
    try:
        result = engine.sql(panel.sql)
    except Exception as e:  # noqa: BLE001 - the panel shows this error box
        return [f"error: {e}"]
    if not result.num_rows:
        return ["no rows"]
    if panel.chart in ("metric", "table"):
        return []
    chart = charts.build(panel, result, pipeline.time_zone)
    enc, problems = chart.spec["encoding"], []
    if enc["y"]["type"] != "quantitative":
        problems.append(f"y axis is {enc['y']['type']}")
    ys = [panel.y] if isinstance(panel.y, str) else list(panel.y or [])
    for y in ys:
        if not _number(chart.data.schema.field(y).type):
            problems.append(f"y {y} reaches the browser as {chart.data.schema.field(y).type}")
    x_type = result.schema.field(panel.x).type
    if pa.types.is_timestamp(x_type) or pa.types.is_date(x_type):
        if enc["x"]["type"] != "temporal":
            problems.append(f"time x axis is {enc['x']['type']}")
        fmt = enc["x"].get("axis", {}).get("format", "")
        if "%I" in fmt or "%p" in fmt or "%H" not in fmt:
            problems.append(f"times not on a 24-hour clock ({fmt!r})")
        if panel.chart == "bar" and (
            "x2" not in enc or chart.spec["mark"].get("orient") != "vertical"
        ):
            problems.append("time bars are hairlines, not their bucket wide")
    elif panel.chart == "bar":
        bars = _shown_bars(chart)
        if len(bars) > READABLE_BARS:
            problems.append(f"{len(bars)} bars")
        values = [v for x, v in bars if x != charts.OTHER]
        if charts.orders_rows(panel.sql):
            wanted = [r[panel.x] for r in result.slice(0, len(values)).to_pylist()]
            if [str(x) for x, _ in bars[: len(values)]] != [str(w) for w in wanted]:
                problems.append("bars not in the query's order")
        elif values != sorted(values, reverse=True):
            problems.append(f"bars not by value: {values[:8]}")
    return problems


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_panel_reads_right(scenarios: dict[str, Pipeline], name: str) -> None:
    pipeline = scenarios[name]
    with QueryEngine(pipeline) as engine:
        problems = {p.title: read_panel(p, engine, pipeline) for p in pipeline.dashboard}
    assert not any(problems.values()), {t: p for t, p in problems.items() if p}


@pytest.fixture(scope="module")
def chromium() -> str:
    return find_chromium()


# the Vega view of each chart, as Vega-Lite's ARIA descriptions state its scales
AXES = (
    "[...document.querySelectorAll('.st-key-panel-%d [data-testid=stVegaLiteChart] "
    "[aria-roledescription=axis]')].map(e => e.getAttribute('aria-label'))"
)
BARS = "document.querySelectorAll('.st-key-panel-%d path[aria-roledescription=bar]').length"


@pytest.mark.parametrize("name", SCENARIOS)
def test_dashboard_draws_the_right_scales(
    scenarios: dict[str, Pipeline], name: str, chromium: str, tmp_path: Path
) -> None:
    pipeline = scenarios[name]
    port = free_port()
    proc = launch(pipeline.base_dir / "pipeline.yaml", port=port, refresh=30)
    browser = Browser(chromium, tmp_path / "chromium")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/_stcore/health").text == "ok", 120, "streamlit")
        browser.send("Page.navigate", url=url)
        for i, panel in enumerate(pipeline.dashboard):
            if panel.chart == "metric":
                metric = f".st-key-panel-{i} [data-testid=stMetricValue]"
                assert wait_for(lambda m=metric: browser.text(m), 120, panel.title) != "—"
                continue
            axes = wait_for(lambda i=i: browser.js(AXES % i), 120, f"the axes of {panel.title}")
            x_axis = next(a for a in axes if a.startswith("X-axis"))
            y_axis = next(a for a in axes if a.startswith("Y-axis"))
            assert "linear scale" in y_axis, (panel.title, y_axis)
            with QueryEngine(pipeline) as engine:
                x_type = engine.sql(panel.sql).schema.field(panel.x).type
            if pa.types.is_timestamp(x_type):
                assert "utc scale" in x_axis or "time scale" in x_axis, (panel.title, x_axis)
                assert not any(m in x_axis for m in (" AM", " PM")), x_axis
            else:
                assert "discrete scale" in x_axis, (panel.title, x_axis)
            if panel.chart == "bar":
                bars = browser.js(BARS % i)
                assert 0 < bars <= READABLE_BARS, (panel.title, bars)
        for flow in pipeline.flows:  # the run has ended: no flow moves records any more
            health = wait_for(lambda f=flow: browser.text(f".st-key-flow-{f}"), 30, flow) or ""
            rate = re.search(r"records/s\s+([\d,.]+)", health)
            assert rate and float(rate.group(1).replace(",", "")) == 0, (flow, health)
        error_boxes = browser.js(
            "document.querySelectorAll('[data-testid=stAlertContentError]').length"
        )
        assert error_boxes == 0, browser.js("document.body.innerText")
        print(json.dumps({"scenario": name, "panels": len(pipeline.dashboard)}))
    finally:
        browser.close()
        shutil.rmtree(tmp_path / "chromium", ignore_errors=True)
        stop(proc)
