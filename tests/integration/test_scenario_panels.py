"""Every scenario's dashboard, read the way a person reads it.

The four scenarios run briefly side by side (``scenario_panels``); then, for every panel:
its query runs without error and returns rows, numbers are drawn on a quantitative axis
(the browser receives numbers, not text), times on a temporal axis, bars appear largest
first unless the query orders them, and a bar chart has a readable number of bars. The
same run then opens each dashboard in Chromium and checks the rendered charts' scales.
(reviews and markets need their demo services: their own tests read their dashboards.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from browser import Browser, free_port, wait_for
from scenario_panels import SCENARIOS, read_drawn, read_panel, running_scenarios

from tidelake.config import Pipeline
from tidelake.lake import QueryEngine
from tidelake.serve.dashboard.launch import launch, stop

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Pipeline]]:
    with running_scenarios(tmp_path_factory.mktemp("scenarios"), free_port()) as pipelines:
        yield pipelines


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_panel_reads_right(scenarios: dict[str, Pipeline], name: str) -> None:
    pipeline = scenarios[name]
    with QueryEngine(pipeline) as engine:
        problems = {p.title: read_panel(p, engine, pipeline) for p in pipeline.dashboard}
    assert not any(problems.values()), {t: p for t, p in problems.items() if p}


@pytest.mark.parametrize("name", SCENARIOS)
def test_dashboard_draws_the_right_scales(
    scenarios: dict[str, Pipeline], name: str, browser: Browser
) -> None:
    pipeline = scenarios[name]
    port = free_port()
    proc = launch(pipeline.base_dir / "pipeline.yaml", port=port, refresh=30)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/_stcore/health").text == "ok", 120, "streamlit")
        browser.send("Page.navigate", url=url)
        read_drawn(browser, pipeline)
        for flow in pipeline.flows:  # the run has ended: no flow moves records any more
            health = wait_for(lambda f=flow: browser.text(f".st-key-flow-{f}"), 30, flow) or ""
            rate = re.search(r"records/s\s+([\d,.]+)", health)
            assert rate and float(rate.group(1).replace(",", "")) == 0, (flow, health)
    finally:
        stop(proc)
