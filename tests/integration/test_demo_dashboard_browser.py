"""`tidelake demo movies` with its dashboard, watched in headless Chromium.

The whole demo runs as the user runs it (one ``tidelake demo movies`` process on free
ports, in a copy of the scenario folder). Two looks at the dashboard a few seconds apart,
without a reload, must show the "Ratings per minute" chart drawn and the "Ratings in the
lake" metric grown, in its data and in its pixels; the REST API sees the same growth.
Ctrl-C (SIGINT) then stops the process tree with exit code 0.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from browser import Browser, Demo, free_port, wait_for
from PIL import ImageChops

pytestmark = pytest.mark.integration

PER_MINUTE = ".st-key-panel-0"  # the scenario's dashboard panels, in file order
TOP_RATED = ".st-key-panel-1"
IN_LAKE = ".st-key-panel-3"


def _number(text: str | None) -> int | None:
    """The first integer in a metric's text (``ratings\\n1,234`` -> 1234)."""
    match = re.search(r"\d[\d,]*", text or "")
    return int(match.group().replace(",", "")) if match else None


def test_demo_movies_dashboard_updates_live(tmp_path: Path, browser: Browser) -> None:
    api, dashboard, ratings = free_port(), free_port(), free_port()
    demo = Demo("movies", tmp_path / "movies", api, dashboard, "--ratings-port", str(ratings))
    try:
        demo.show(browser)
        assert browser.js("document.title") is not None

        bar = json.dumps(f"{PER_MINUTE} [data-testid=stVegaLiteChart] svg .mark-rect path")
        wait_for(
            lambda: browser.js(f"document.querySelector({bar})?.getAttribute('d')"),
            120,
            "the 'Ratings per minute' chart",
        )
        metric = f"{IN_LAKE} [data-testid=stMetricValue]"
        first_count = wait_for(lambda: _number(browser.text(metric)), 60, "the lake count")
        assert "Ratings per minute" in (browser.text(PER_MINUTE) or "")
        assert "Ratings in the lake" in (browser.text(IN_LAKE) or "")
        browser.js("window.__not_reloaded = true")
        first = browser.screenshot(IN_LAKE)
        first_chart = browser.screenshot(f"{PER_MINUTE} [data-testid=stVegaLiteChart]")

        # the REST API reads the same lake, and sees new snapshots without a restart
        query = {"sql": "SELECT count(*) AS n FROM lake.ratings"}
        with httpx.Client(base_url=f"http://127.0.0.1:{api}", timeout=30) as client:
            n0 = client.post("/api/query", json=query).json()["rows"][0][0]
            wait_for(
                lambda: client.post("/api/query", json=query).json()["rows"][0][0] > n0,
                30,
                "the API's count to grow",
            )

        time.sleep(4)  # two refreshes at the default 2 s
        second_count = wait_for(
            lambda: (n := _number(browser.text(metric))) is not None and n > first_count and n,
            30,
            "the metric to grow",
        )
        second = browser.screenshot(IN_LAKE)
        second_chart = browser.screenshot(f"{PER_MINUTE} [data-testid=stVegaLiteChart]")
        assert browser.js("window.__not_reloaded") is True, "updates must not reload the page"
        assert second_count > first_count
        # a wider number may change the element's size, which is a visible change too
        assert first.size != second.size or ImageChops.difference(first, second).getbbox(), (
            f"the metric went {first_count} -> {second_count} but its pixels did not change"
        )
        assert first_chart.size[0] > 100 and first_chart.size[1] > 100, "chart drawn too small"
        assert (
            first_chart.size != second_chart.size
            or ImageChops.difference(first_chart, second_chart).getbbox()
        ), "the 'Ratings per minute' chart looks the same after the lake grew"
        bars = f"{TOP_RATED} [data-testid=stVegaLiteChart] svg .mark-rect path"
        wait_for(
            lambda: browser.js(f"document.querySelectorAll({json.dumps(bars)}).length"),
            60,
            "the top-rated bar chart (ratings joined with the movies table)",
        )
        assert "ratings flowing into the lake" in demo.output, demo.output
    finally:
        code = demo.interrupt()
    assert code == 0, demo.output
    assert "demo stopped" in demo.output, demo.output
