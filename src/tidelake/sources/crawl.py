"""``crawl``: records extracted from web pages by CSS selectors, politely, each once.

From the seed URLs the crawler follows the ``next`` links and the links matching ``follow``
patterns within ``allowed_domains``, never a path robots.txt disallows for its user agent.
Per host, at most ``concurrency`` requests are in flight and two requests start at least
``delay`` seconds apart (robots.txt's Crawl-delay when larger). With ``recrawl``, pages are
fetched again after that many seconds with If-None-Match / If-Modified-Since, so an
unchanged page costs a 304.

Each once: a page whose content hash did not change emits nothing, and of a changed page only
the records never seen before (by a hash of their fields). The crawler's state (the
frontier, validators and hashes of every page, and every record it emitted, numbered) lives
in ``<state>/crawl/<flow>.db``, written before the records are handed on; the position
``{"crawl_seq": n}`` stored by the sink says which have landed, and a restarted flow first
hands on the records numbered after it, then goes on with the frontier: nothing is emitted
twice, nothing skipped. A page that is not HTML or whose records lack a required field goes
to the dead-letter topic with its URL and the reason.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import httpx
import pyarrow as pa
from parsel import Selector
from pydantic import Field

from tidelake.runtime.base import Batch, Checkpoint, ConnectorConfig, FlowContext, Source
from tidelake.sqlite_wal import open_wal

POSITION = "crawl_seq"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pages (url TEXT PRIMARY KEY, due REAL, etag TEXT,
    last_modified TEXT, hash TEXT);
CREATE TABLE IF NOT EXISTS seen (hash TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, row TEXT);
"""


class CrawlConfig(ConnectorConfig):
    type: Literal["crawl"]
    seeds: list[str] = Field(min_length=1, description="URLs the crawl starts from")
    allowed_domains: list[str] = Field(
        [], description="hosts the crawl stays on (default: the seeds' hosts)"
    )
    records: str = Field(description="CSS selector of each record, e.g. div.review")
    fields: dict[str, str] = Field(
        min_length=1,
        description="column -> CSS selector inside a record (parsel: ::text, ::attr(name)), "
        "e.g. {rating: 'span.rating::text'}",
    )
    required: list[str] | None = Field(
        None, description="fields a record must have (default: all); else a dead letter"
    )
    next: str | None = Field(None, description="CSS selector of the next page's link, e.g. a.next")
    follow: list[str] = Field(
        [], description="regular expressions: links whose URL matches one are crawled too"
    )
    delay: float = Field(1.0, ge=0, description="seconds between two requests to one host")
    concurrency: int = Field(1, ge=1, description="requests in flight per host at most")
    recrawl: float | None = Field(
        None, gt=0, description="fetch each page again after this many seconds (unset: once)"
    )
    user_agent: str = Field("tidelake", description="User-Agent, matched against robots.txt")
    timeout: float = Field(30.0, gt=0, description="seconds per request")


@dataclass
class _Fetched:
    url: str
    status: int
    text: str = ""
    etag: str | None = None
    last_modified: str | None = None
    content_type: str = ""


class _Host:
    """A host's politeness: ``concurrency`` slots, request starts ``delay`` s apart."""

    def __init__(self, concurrency: int, delay: float) -> None:
        self.slots = threading.Semaphore(concurrency)
        self.lock = threading.Lock()
        self.delay = delay
        self.next_start = 0.0

    def wait_turn(self) -> None:
        with self.lock:
            wait = self.next_start - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.next_start = time.monotonic() + self.delay


def _link(selector: str) -> str:
    return selector if "::" in selector else f"{selector}::attr(href)"


class CrawlSource(Source):
    Config = CrawlConfig
    config: CrawlConfig

    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        c = self.config
        self.ctx = ctx
        self.domains = set(c.allowed_domains or [urlsplit(u).hostname or "" for u in c.seeds])
        self.follow = [re.compile(p) for p in c.follow]
        self.required = c.required if c.required is not None else list(c.fields)
        self.client = httpx.Client(
            headers={"User-Agent": c.user_agent}, timeout=c.timeout, follow_redirects=True
        )
        self.hosts: dict[str, _Host] = {}
        self.robots: dict[str, RobotFileParser] = {}
        self.pool = ThreadPoolExecutor(max_workers=4 * c.concurrency)
        self.db = open_wal(ctx.pipeline.state_dir / "crawl" / f"{ctx.flow}.db")
        self.db.executescript(_SCHEMA)
        self.db.executemany(
            "INSERT OR IGNORE INTO pages (url, due) VALUES (?, 0)", [(u,) for u in c.seeds]
        )
        self.landed = checkpoint.get(POSITION, 0)

    def close(self) -> None:
        if hasattr(self, "pool"):
            self.pool.shutdown(wait=True)
            self.client.close()
            self.db.close()

    def read(self, max_records: int, timeout: float) -> Batch | None:
        pending = self._pending(max_records)
        if pending is not None:
            return pending
        now = time.time()
        due = self.db.execute(
            "SELECT url, etag, last_modified FROM pages WHERE due <= ? ORDER BY due, url LIMIT ?",
            (now, 8 * self.config.concurrency),
        ).fetchall()
        refused = [(u,) for u, _, _ in due if not self._allowed(u)]
        self.db.executemany("UPDATE pages SET due = NULL WHERE url = ?", refused)
        due = [page for page in due if (page[0],) not in refused]
        if not due and not refused:
            (left,) = self.db.execute("SELECT min(due) FROM pages").fetchone()
            if left is None:
                return None
            time.sleep(max(0.0, min(timeout, left - now)))
            return Batch(pa.table({}))
        for fetched in self.pool.map(lambda page: self._fetch(*page), due):
            self._store(fetched)
        return self._pending(max_records) or Batch(pa.table({}))

    def _pending(self, max_records: int) -> Batch | None:
        """Records numbered after what landed, in order (the replay after a restart too)."""
        rows = self.db.execute(
            "SELECT seq, row FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
            (self.landed, max_records),
        ).fetchall()
        if not rows:
            return None
        self.landed = rows[-1][0]
        table = pa.Table.from_pylist([json.loads(r) for _, r in rows])
        return Batch(table, {POSITION: self.landed})

    def _allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.hostname not in self.domains:
            return False
        origin = f"{parts.scheme}://{parts.netloc}"
        robots = self.robots.get(origin)
        if robots is None:
            robots = RobotFileParser()
            try:
                answer = self.client.get(f"{origin}/robots.txt")
                lines = answer.text.splitlines() if answer.status_code == 200 else []
            except httpx.HTTPError:
                lines = []
            robots.parse(lines)
            self.robots[origin] = robots
            crawl_delay = robots.crawl_delay(self.config.user_agent)
            self.hosts[origin] = _Host(
                self.config.concurrency, max(self.config.delay, float(crawl_delay or 0))
            )
        return robots.can_fetch(self.config.user_agent, url)

    def _fetch(self, url: str, etag: str | None, modified: str | None) -> _Fetched:
        """GET ``url`` in its host's turn (a pool thread: touches neither state nor robots)."""
        headers = {"If-None-Match": etag} if etag else {}
        if modified:
            headers["If-Modified-Since"] = modified
        host = self.hosts[f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"]
        with host.slots:
            host.wait_turn()
            r = self.client.get(url, headers=headers)
        return _Fetched(
            url,
            r.status_code,
            r.text if r.status_code == 200 else "",
            r.headers.get("ETag"),
            r.headers.get("Last-Modified"),
            r.headers.get("Content-Type", ""),
        )

    def _store(self, page: _Fetched) -> None:
        """One transaction: the page's validators and next visit, new links, new records."""
        due = time.time() + self.config.recrawl if self.config.recrawl else None
        links: list[str] = []
        records: list[dict[str, str | None]] = []
        problem = None
        digest = hashlib.sha256(page.text.encode()).hexdigest()
        if page.status == 200 and "html" not in page.content_type:
            problem = f"crawl: {page.url}: not HTML (Content-Type {page.content_type!r})"
        elif page.status == 200:
            sel = Selector(text=page.text)
            if self.config.next:
                links += sel.css(_link(self.config.next)).getall()
            if self.follow:
                links += [
                    h
                    for h in sel.css("a::attr(href)").getall()
                    if any(p.search(h) for p in self.follow)
                ]
            links = [urldefrag(urljoin(page.url, h)).url for h in links]
            records = [
                {"url": page.url, **{k: _text(r, s) for k, s in self.config.fields.items()}}
                for r in sel.css(self.config.records)
            ]
            bad = [r for r in records if any(not r[k] for k in self.required)]
            if bad:
                problem = (
                    f"crawl: {page.url}: {len(bad)} record(s) without "
                    f"{', '.join(k for k in self.required if any(not r[k] for r in bad))}"
                )
                records = [r for r in records if r not in bad]
        elif page.status >= 400:
            problem = f"crawl: {page.url}: HTTP {page.status}"
        db = self.db
        (old,) = db.execute("SELECT hash FROM pages WHERE url = ?", (page.url,)).fetchone()
        changed = page.status == 200 and digest != old
        if problem and (changed or page.status != 200):
            self.ctx.dead_letter(pa.table({"url": [page.url]}), problem)
        db.execute("BEGIN IMMEDIATE")
        try:
            if changed:
                db.execute(
                    "UPDATE pages SET etag = ?, last_modified = ?, hash = ? WHERE url = ?",
                    (page.etag, page.last_modified, digest, page.url),
                )
                for record in records:
                    row = json.dumps(record, sort_keys=True)
                    h = hashlib.sha256(row.encode()).hexdigest()
                    if db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (h,)).rowcount:
                        db.execute("INSERT INTO records (row) VALUES (?)", (row,))
            db.execute("UPDATE pages SET due = ? WHERE url = ?", (due, page.url))
            db.executemany(
                "INSERT OR IGNORE INTO pages (url, due) VALUES (?, 0)",
                [(u,) for u in links if urlsplit(u).hostname in self.domains],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _text(record: Selector, selector: str) -> str | None:
    value = record.css(selector).get()
    return value.strip() if value is not None else None
