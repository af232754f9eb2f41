"""The crawl source against a local review site: robots.txt obeyed, pagination followed to
the end, one fetch per change (ETag), the per-host delay measured, dead letters for a page
without the required fields, and a restart that hands on exactly the records not landed."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest
from scenario_run import run_until

from tidelake.broker import connect
from tidelake.config import loads
from tidelake.runtime import dead_letters
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.sources.crawl import CrawlSource

pytestmark = pytest.mark.integration
PAGES = 5
PER_PAGE = 4
DELAY = 0.25

PIPELINE = """
name: crawl
flows:
  site:
    source:
      type: crawl
      seeds: ["http://127.0.0.1:%d/reviews?page=1"]
      records: div.review
      fields: {author: ".author::text", rating: ".rating::text", text: "p::text"}
      next: a.next
      follow: ["/product/"]
      delay: %s
      recrawl: 1.0
    sink: {type: table, table: reviews}
    batch: {size: 100, max_latency: 0.2}
"""


class Site(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.log: list[tuple[float, str, int]] = []
        self.extra = 0  # reviews added to the last page over time


def _review(n: int, rating: str = "3") -> str:
    return (
        f'<div class="review"><span class="author">a{n}</span>'
        f'<span class="rating">{rating}</span><p>avis {n}</p></div>'
    )


class Handler(BaseHTTPRequestHandler):
    server: Site

    def do_GET(self) -> None:
        path = self.path
        if path == "/robots.txt":
            return self._send(200, "User-agent: *\nDisallow: /private/\n", "text/plain")
        if path.startswith("/reviews?page="):
            page = int(path.rsplit("=", 1)[1])
            n = PER_PAGE + (self.server.extra if page == PAGES else 0)
            body = "".join(_review(page * 100 + i) for i in range(n))
            if page < PAGES:
                body += f'<a class="next" href="/reviews?page={page + 1}">suivant</a>'
            body += '<a href="/private/admin">admin</a><a href="/product/p1#top">p1</a>'
            body += '<a href="/product/broken">broken</a>'
        elif path == "/product/p1":
            body = _review(1) + _review(2)
        elif path == "/product/broken":
            body = _review(3, rating="")
        else:
            return self._send(404, "no", "text/plain")
        return self._send(200, f"<html><body>{body}</body></html>", "text/html; charset=utf-8")

    def _send(self, status: int, text: str, kind: str) -> None:
        etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:16] + '"'
        if status == 200 and self.headers.get("If-None-Match") == etag:
            status, text = 304, ""
        self.server.log.append((time.monotonic(), self.path, status))
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db) as c:
            return int(c.execute("SELECT count(DISTINCT author) FROM reviews").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_crawl_is_polite_complete_and_emits_each_record_once(tmp_path: Path) -> None:
    site = Site()
    threading.Thread(target=site.serve_forever, daemon=True).start()
    pipeline = loads(PIPELINE % (site.server_address[1], DELAY), tmp_path / "pipeline.yaml")
    db = tmp_path / ".tidelake" / "pipeline.db"
    first = PAGES * PER_PAGE + 2
    try:
        run_until(pipeline, lambda: _count(db) >= first, timeout=60)
        assert _count(db) == first
        fetched = [(t, p, s) for t, p, s in site.log if p != "/robots.txt"]
        assert not any(p.startswith("/private/") for _, p, _ in site.log)
        pages = [p for _, p, s in fetched if s == 200]
        assert sorted(pages) == sorted(
            [f"/reviews?page={i}" for i in range(1, PAGES + 1)] + ["/product/p1", "/product/broken"]
        )  # pagination to the end, each page once, the fragment dropped
        starts = [t for t, _, _ in fetched]
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert min(gaps) >= DELAY * 0.95, gaps

        site.extra = 3  # the last page gains three reviews; the restart crawls again (ETag)
        before = len(site.log)
        run_until(pipeline, lambda: _count(db) >= first + 3, timeout=60)
        assert _count(db) == first + 3
        again = [(p, s) for _, p, s in site.log[before:] if p != "/robots.txt"]
        assert [p for p, s in again if s == 200] == [f"/reviews?page={PAGES}"]
        assert {s for _, s in again} == {200, 304}
    finally:
        site.shutdown()
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT author FROM reviews").fetchall()
    assert len(rows) == len(set(rows)) == first + 3  # no duplicates across the restart

    broker = connect(pipeline.url(pipeline.broker))
    letters = list(dead_letters.read(broker, dead_letters.dead_letter_topic(pipeline, "site")))
    broker.close()
    assert [x.value["payload"]["url"] for x in letters][-1].endswith("/product/broken")
    assert "without rating" in letters[-1].reason

    # A crash after records were handed on but before they landed: the sink's position is
    # lower than the crawler's numbering, and exactly the records after it come again.
    source = CrawlSource(pipeline.flows["site"].source)
    ctx = FlowContext("site", pipeline, FlowMetrics("site"), broker_factory=lambda: broker)
    source.open(ctx, {"crawl_seq": first - 2})
    batch = source.read(100, 0.1)
    source.close()
    assert batch is not None and batch.positions == {"crawl_seq": first + 3}
    assert isinstance(batch.table, pa.Table) and batch.table.num_rows == 5
