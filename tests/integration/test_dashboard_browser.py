"""The dashboard in a real browser: a panel's chart renders and keeps up with a growing lake table.

A generator -> lake flow runs in a thread while headless Chromium, driven over the
Chrome DevTools Protocol, watches the dashboard. Two looks a few seconds apart
(no reload in between) must show a drawn chart whose data and pixels changed, so
the test fails if the page stops refreshing or stops seeing new lake snapshots.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageChops
from websockets.sync.client import ClientConnection, connect

from tidelake import config
from tidelake.runtime.runner import FlowRunner
from tidelake.serve.dashboard.launch import launch, stop

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
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
    sql: SELECT no_such_column FROM ticks
    chart: bar
"""
CHART = ".st-key-panel-0 [data-testid=stVegaLiteChart]"


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("TIDELAKE_BROWSER_TESTS") == "0":
            pytest.skip(f"{CHROMIUM} is absent and TIDELAKE_BROWSER_TESTS=0")
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            check=True,
            env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
        )
    return CHROMIUM


class Browser:
    """Headless Chromium on one page, driven through the DevTools Protocol."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "--window-size=1400,1600", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 30, "chromium")
        port = port_file.read_text().split()[0]
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
        page = next(p for p in pages if p["type"] == "page")
        self._close = contextlib.ExitStack()
        self.ws: ClientConnection = self._close.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None)
        )
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        id_ = next(self.ids)
        self.ws.send(json.dumps({"id": id_, "method": method, "params": params}))
        while True:  # skip events until our answer
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == id_:
                assert "error" not in msg, msg["error"]
                result: dict[str, Any] = msg["result"]
                return result

    def js(self, expression: str) -> Any:
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def screenshot(self, selector: str) -> Image.Image:
        """The pixels of one element, from a settled page (no fragment re-running)."""
        wait_for(lambda: self.js("document.querySelectorAll('[data-stale=true]').length") == 0,
                 10, "the page to settle")  # fmt: skip
        box = self.js(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return {x: r.x + scrollX, y: r.y + scrollY, "
            "width: r.width, height: r.height, scale: 1}; })()"
        )
        shot = self.send(
            "Page.captureScreenshot", format="png", clip=box, captureBeyondViewport=True
        )
        return Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")

    def close(self) -> None:
        self._close.close()
        self.proc.terminate()
        self.proc.wait(10)


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := check():
                print(f"waited {timeout - deadline + time.monotonic():.1f}s for {what}")
                return value
        except (AssertionError, httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    b = Browser(chromium, tmp_path / "chromium")
    yield b
    b.close()
    shutil.rmtree(tmp_path / "chromium", ignore_errors=True)


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
        assert "no_such_column" in broken, "a failing panel shows its error in place"

        time.sleep(5)  # two refreshes at the default 2 s; more time only if the machine is slow
        wait_for(lambda: browser.js(path_data) != first_path, 30, "the chart's data to change")
        second = browser.screenshot(CHART)
        assert browser.js("window.__not_reloaded") is True, "updates must not reload the page"
        assert first.size == second.size
        changed = ImageChops.difference(first, second).getbbox()
        assert changed is not None, "the chart looks the same after 5 s: no live refresh"

        health = browser.js("document.querySelector('.st-key-flow-ticks').innerText")
        rate = re.search(r"records/s\s+([\d,.]+)", health)
        assert "running" in health and rate and float(rate.group(1).replace(",", "")) > 0, health
    finally:
        code = stop(proc)
    assert code == 0, f"the dashboard did not stop cleanly on SIGTERM (exit {code})"
