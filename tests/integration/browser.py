"""Headless Chromium driven over the Chrome DevTools Protocol, for the dashboard tests,
and ``tidelake demo`` run in the background for them to watch.

No Selenium/Playwright: the machine's ``/usr/bin/chromium`` (installed with apt-get when
absent) is started with ``--remote-debugging-port=0`` and one page is driven through
its WebSocket: navigate, evaluate JavaScript, screenshot an element.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from websockets.sync.client import ClientConnection, connect

CHROMIUM = "/usr/bin/chromium"


def find_chromium() -> str:
    """The Chromium binary; apt-get installs it when absent (TIDELAKE_BROWSER_TESTS=0 skips)."""
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

    def text(self, selector: str) -> str | None:
        """``innerText`` of the first element matching ``selector`` (None when absent)."""
        value = self.js(f"document.querySelector({json.dumps(selector)})?.innerText ?? null")
        return None if value is None else str(value)

    def screenshot(self, selector: str) -> Image.Image:
        """The pixels of one element, from a settled page (no fragment re-running).

        The element is scrolled into view first: Streamlit scrolls an inner container, not
        the document, so an element below the window would capture as blank.
        """
        wait_for(lambda: self.js("document.querySelectorAll('[data-stale=true]').length") == 0,
                 10, "the page to settle")  # fmt: skip
        element = f"document.querySelector({json.dumps(selector)})"
        self.js(f"{element}.scrollIntoView({{block: 'center', behavior: 'instant'}})")
        frames = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
        self.send("Runtime.evaluate", expression=frames, awaitPromise=True)  # painted
        box = self.js(
            f"(() => {{ const r = {element}"
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
    """Poll ``check`` until it returns something truthy; AssertionError after ``timeout`` s."""
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


DEMO_SERVICES = ("RATINGS_API", "REVIEWS_APP", "MARKET_API")
"""Outside services a demo starts itself unless the environment names them."""


class Demo:
    """``tidelake demo NAME`` in the background; its output collected by a reader thread.
    ``env`` adds to the environment (``MARKET_API``: the test's own market API)."""

    def __init__(
        self,
        name: str,
        folder: Path,
        api: int,
        dashboard: int,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.dashboard = f"http://127.0.0.1:{dashboard}"
        environ = {k: v for k, v in os.environ.items() if k not in DEMO_SERVICES}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidelake.cli", "demo", name,
             "--api-port", str(api), "--dashboard-port", str(dashboard),
             "--dir", str(folder), *args],
            env=environ | {"PYTHONUNBUFFERED": "1"} | (env or {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def alive(self) -> bool:
        """True while the demo runs; the test fails with its output once it has exited."""
        if self.proc.poll() is not None:
            self._reader.join(10)
            pytest.fail(f"the demo exited with {self.proc.returncode}:\n{self.output}")
        return True

    def show(self, browser: Browser) -> None:
        """Open the demo's dashboard in ``browser`` once it is up."""
        wait_for(
            lambda: self.alive() and httpx.get(f"{self.dashboard}/_stcore/health").text == "ok",
            120,
            "the dashboard",
        )
        browser.send("Page.navigate", url=self.dashboard)

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, then the exit code (SIGKILL and an error if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"demo ignored Ctrl-C for {timeout}s:\n{self.output}") from None
        self._reader.join(10)
        return code
