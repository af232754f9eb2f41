"""Dashboards read as a person reads them: every panel's result (``read_panel``) and its
drawing in Chromium (``read_drawn``), and the four scenarios run briefly side by side for the
tests that read their dashboards."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from browser import Browser, wait_for

from tidelake.config import Panel, Pipeline, load
from tidelake.demo.ratings_api import create_app as ratings_app
from tidelake.lake import QueryEngine
from tidelake.runtime.runner import run_flows
from tidelake.serve.dashboard import charts

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("movies", "datalake", "stock", "users")
# real rates where times matter (fractional event times, as a live run writes them)
ENV = {
    "DATALAKE_RATE": "500",
    "DATALAKE_LIMIT": "2500",
    "STOCK_RATE": "0",
    "STOCK_LIMIT": "3000",
    "USERS_RATE": "0",
    "USERS_LIMIT": "1500",
    "TIDELAKE_PSEUDONYMIZE_KEY": "scenario-panels-test-key-0123456789abcdef",
}


def panels_filled(pipeline: Pipeline) -> bool:
    """Every panel's query runs and returns rows (what a person waits for)."""
    try:
        with QueryEngine(pipeline) as engine:
            return all(engine.sql(p.sql).num_rows for p in pipeline.dashboard)
    except Exception:  # noqa: BLE001 - tables not landed yet; the tests report real errors
        return False


@contextmanager
def running_scenarios(tmp: Path, port: int, timeout: float = 90) -> Iterator[dict[str, Pipeline]]:
    """Copy and run the four scenarios at once until each one's panels all have rows (or
    ``timeout``), stop them, and yield their pipelines (the state stays for the tests)."""
    from tidelake.demo import _Server

    with ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        for k, v in ENV.items():
            mp.setenv(k, v)
        mp.setenv("RATINGS_API", f"http://127.0.0.1:{port}")
        api = _Server(ratings_app(rate=300.0), port)
        api.start()
        api.wait_ready()
        stack.callback(api.stop)
        pipelines = {}
        for name in SCENARIOS:
            shutil.copytree(ROOT / "scenarios" / name, tmp / name,
                            ignore=shutil.ignore_patterns(".tidelake"))  # fmt: skip
            pipelines[name] = load(tmp / name / "pipeline.yaml")
        stop = threading.Event()
        errors: dict[str, BaseException] = {}

        def run(name: str) -> None:
            try:
                run_flows(pipelines[name], list(pipelines[name].flows), stop)
            except BaseException as e:  # reported below
                errors[name] = e

        workers = [threading.Thread(target=run, args=(n,), name=n) for n in SCENARIOS]
        for w in workers:
            w.start()
        started = time.monotonic()
        pending = set(SCENARIOS)
        while pending and not errors and time.monotonic() - started < timeout:
            time.sleep(1.0)
            pending = {n for n in pending if not panels_filled(pipelines[n])}
        print(f"scenarios ran {time.monotonic() - started:.0f}s; still empty: {sorted(pending)}")
        stop.set()
        for w in workers:
            w.join(60)
        assert not errors, errors
        yield pipelines


READABLE_BARS = 25


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


# the Vega views of a panel's charts, as Vega-Lite's ARIA descriptions state their scales
_ARIA = (
    "[...document.querySelectorAll('.st-key-panel-%d [data-testid=stVegaLiteChart] "
    "[aria-roledescription=%s]')].map(e => e.getAttribute('aria-label'))"
)
_BARS = "document.querySelectorAll('.st-key-panel-%d path[aria-roledescription=bar]').length"
_ERRORS = (
    "[...document.querySelectorAll('[data-testid=stAlertContentError]')].map(e => e.innerText)"
)


def read_drawn(browser: Browser, pipeline: Pipeline) -> None:
    """Assert that every panel of the dashboard open in ``browser`` is drawn right: a metric
    shows a value; values are on a linear scale, times (by the result's Arrow type) on a UTC
    scale (the wall clock) without AM/PM, categories on a discrete one, a heatmap's colour on a
    gradient; a bar chart has a readable number of bars; no panel shows an error."""
    with QueryEngine(pipeline) as engine:
        schemas = [engine.sql(p.sql).schema for p in pipeline.dashboard]
    for i, (panel, schema) in enumerate(zip(pipeline.dashboard, schemas, strict=True)):
        if panel.chart == "table":
            continue
        if panel.chart == "metric":
            metric = f".st-key-panel-{i} [data-testid=stMetricValue]"
            assert wait_for(lambda m=metric: browser.text(m), 120, panel.title) != "—"
            continue
        axes = wait_for(lambda i=i: browser.js(_ARIA % (i, "axis")), 120, panel.title)
        xs = [a for a in axes if a.startswith("X-axis")]
        ys = [a for a in axes if a.startswith("Y-axis")]
        assert xs and ys, (panel.title, axes)
        if panel.chart == "heatmap":
            assert all("discrete scale" in a for a in xs + ys), (panel.title, axes)
            legends = browser.js(_ARIA % (i, "legend"))
            assert any(g.startswith("Gradient legend") for g in legends), (panel.title, legends)
            continue
        assert all("linear scale" in a for a in ys), (panel.title, ys)
        x_type = schema.field(panel.x).type
        for x in xs:
            if pa.types.is_timestamp(x_type) or pa.types.is_date(x_type):
                assert "utc scale" in x, (panel.title, x)
                assert not any(m in x for m in (" AM", " PM")), (panel.title, x)
            else:
                assert "discrete scale" in x, (panel.title, x)
        if panel.chart == "bar":
            assert 0 < browser.js(_BARS % i) <= READABLE_BARS, panel.title
    errors = browser.js(_ERRORS)
    assert errors == [], errors
