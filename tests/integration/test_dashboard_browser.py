"""The dashboard in a real browser: a panel's chart renders and keeps up with a growing lake table.

A generator -> lake flow runs in a thread while headless Chromium, driven over the
Chrome DevTools Protocol, watches the dashboard. Two looks a few seconds apart
(no reload in between) must show a drawn chart whose data and pixels changed, so
the test fails if the page stops refreshing or stops seeing new lake snapshots.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser import Browser, free_port, wait_for
from PIL import ImageChops

from tidelake import config
from tidelake.runtime.runner import FlowRunner
from tidelake.serve.dashboard.launch import launch, stop

pytestmark = pytest.mark.integration

PIPELINE = """\
name: ticks-live
flows:
  ticks:
    source: {type: generator, kind: stock_ticks, rate: 40}
    sink: {type: lake, table: ticks}
    batch: {max_latency: 0.3}
dashboard:
  - title: Ticks per second
    sql: >-
      SELECT date_trunc('second', ts) AS second, count(*) AS ticks
      FROM ticks GROUP BY 1 ORDER BY 1
    chart: line
    x: second
    y: ticks
  - title: Broken on purpose
    sql: SELECT "no_such*column*here" FROM ticks
    chart: bar
"""
CHART = ".st-key-panel-0 [data-testid=stVegaLiteChart]"


@pytest.fixture
def live_pipeline(tmp_path: Path) -> Iterator[Path]:
    """The pipeline file, with its flow landing ticks in the lake for the test's duration."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE)
    stop_flow = threading.Event()
    runner = FlowRunner(config.load(path), "ticks", stop_flow)
    thread = threading.Thread(target=runner.run, name="flow-ticks")
    thread.start()
    yield path
    stop_flow.set()
    thread.join(30)
    assert runner.metrics.state == "stopped", runner.metrics.last_error


def test_dashboard_charts_refresh_live(live_pipeline: Path, browser: Browser) -> None:
    port = free_port()
    proc = launch(live_pipeline, port=port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/_stcore/health").text == "ok", 120, "streamlit")
        browser.send("Page.navigate", url=url)
        line = json.dumps(f"{CHART} svg .mark-line path")
        path_data = f"document.querySelector({line})?.getAttribute('d')"
        wait_for(lambda: browser.js(path_data), 120, "the line chart")

        first = browser.screenshot(CHART)
        first_path = browser.js(path_data)
        browser.js("window.__not_reloaded = true")
        assert browser.js("document.title") == "tidelake"
        assert "ticks-live" in browser.js("document.querySelector('h1').innerText")
        broken = browser.js("document.querySelector('.st-key-panel-1').innerText")
        assert "no_such*column*here" in broken, "a failing panel shows its error in place"

        time.sleep(5)  # two refreshes at the default 2 s; more time only if the machine is slow
        wait_for(lambda: browser.js(path_data) != first_path, 30, "the chart's data to change")
        second = browser.screenshot(CHART)
        assert browser.js("window.__not_reloaded") is True, "updates must not reload the page"
        # wider axis labels may resize the chart, which is a visible change too
        changed = first.size != second.size or ImageChops.difference(first, second).getbbox()
        assert changed, "the chart looks the same after 5 s: no live refresh"

        health = browser.js("document.querySelector('.st-key-flow-ticks').innerText")
        rate = re.search(r"records/s\s+([\d,.]+)", health)
        assert "running" in health and rate and float(rate.group(1).replace(",", "")) > 0, health
    finally:
        code = stop(proc)
    assert code == 0, f"the dashboard did not stop cleanly on SIGTERM (exit {code})"
