"""``http``: poll a JSON API on an interval, following pagination, with retries and a rate limit.

Delivery: an HTTP API is not replayable, so this source is at-least-once from
the API's side: a poll whose rows were not yet committed when the flow
stopped is simply polled again (and may return different rows). Make the API
query idempotent (an ``updated_since`` parameter, or de-duplicating on a key
downstream) when that matters. The position ``{"requests": n}`` counts
successful requests; it survives restarts for observability, not for replay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin

import httpx
import orjson
import pyarrow as pa
import pyarrow.json as pajson
from pydantic import BaseModel, ConfigDict, Field

from tidelake.errors import ConnectorError
from tidelake.runtime.base import Batch, Checkpoint, ConnectorConfig, FlowContext, Source
from tidelake.sources.file import dig, records_table

_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


class Pagination(BaseModel):
    """How one poll walks through pages."""

    model_config = ConfigDict(extra="forbid")

    style: Literal["none", "next_url", "page", "offset"] = Field(
        default="none",
        description="next_url: follow a URL found in each response; page / offset: increment a "
        "query parameter until a page comes back empty (or short of page_size)",
    )
    next_url: str = Field(
        default="next", description="next_url: dotted JSON path of the next page's URL"
    )
    param: str | None = Field(
        default=None, description="page / offset: query parameter (default: its style)"
    )
    start: int | None = Field(
        default=None, description="first page (default 1) or offset (default 0)"
    )
    page_size: int | None = Field(
        default=None,
        gt=0,
        description="records per page: a shorter page ends the poll; sent as size_param",
    )
    size_param: str | None = Field(
        default=None, description="query parameter carrying page_size (e.g. limit)"
    )
    max_pages: int = Field(default=100, gt=0, description="pages per poll at most")


@dataclass
class _Poll:
    url: str
    params: dict[str, Any]
    pages: int = 0
    value: int = 0
    buffered: list[pa.Table] = field(default_factory=list)


class HttpSource(Source):
    """Rows of a JSON API, one poll every ``interval`` seconds (pages fetched as rows are read)."""

    class Config(ConnectorConfig):
        type: Literal["http"]
        url: str = Field(description="endpoint to poll")
        method: Literal["GET", "POST"] = "GET"
        params: dict[str, str | int | float | bool] = Field({}, description="query parameters")
        headers: dict[str, str] = Field(
            {},
            description="request headers; secrets via ${VAR} (e.g. Authorization: Bearer ${TOKEN})",
        )
        body: dict[str, Any] | list[Any] | None = Field(None, description="JSON body (POST)")
        records: str = Field(
            "", description="dotted path to the records list, e.g. data.items (root list if empty)"
        )
        interval: float = Field(10.0, ge=0, description="seconds between the starts of two polls")
        max_polls: int | None = Field(
            None, gt=0, description="stop after this many polls (unset: poll forever)"
        )
        pagination: Pagination = Field(default_factory=Pagination)
        rate_limit: float | None = Field(None, gt=0, description="requests per second at most")
        retries: int = Field(5, ge=0, description="retries of a 5xx/429/connection error")
        backoff: float = Field(0.5, ge=0, description="first retry delay in s, doubled each time")
        backoff_max: float = Field(30.0, ge=0, description="longest retry delay in s")
        timeout: float = Field(30.0, gt=0, description="seconds per request")

    config: Config

    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        self.ctx = ctx
        self.requests = checkpoint.get("requests", 0)
        self.polls = 0
        self.client = httpx.Client(
            headers={"User-Agent": "tidelake", **self.config.headers},
            timeout=self.config.timeout,
            follow_redirects=True,
        )
        self._poll: _Poll | None = None
        self._next_poll = 0.0
        self._last_request = 0.0
        self._rows: pa.Table | None = None

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.close()

    def read(self, max_records: int, timeout: float) -> Batch | None:
        deadline = time.monotonic() + timeout
        while True:
            if self._rows is not None and self._rows.num_rows:
                out, self._rows = self._rows.slice(0, max_records), self._rows.slice(max_records)
                return Batch(out, {"requests": self.requests})
            if self._poll is None:
                if self.config.max_polls is not None and self.polls >= self.config.max_polls:
                    return None
                now = time.monotonic()
                if now < self._next_poll:
                    if now >= deadline:
                        return Batch(pa.table({}))
                    time.sleep(min(deadline, self._next_poll) - now)
                    continue
                self._start_poll(now)
            assert self._poll is not None
            self._rows = self._fetch_page(self._poll)
            if self._rows is None or not self._rows.num_rows:
                return Batch(pa.table({}), {"requests": self.requests})

    def _start_poll(self, now: float) -> None:
        p = self.config.pagination
        self.polls += 1
        self._next_poll = now + self.config.interval
        poll = _Poll(self.config.url, dict(self.config.params))
        if p.style in ("page", "offset"):
            poll.value = p.start if p.start is not None else (1 if p.style == "page" else 0)
            if p.page_size and p.size_param:
                poll.params[p.size_param] = p.page_size
        self._poll = poll

    def _fetch_page(self, poll: _Poll) -> pa.Table | None:
        """Fetch the poll's next page and advance (or end) the poll."""
        p = self.config.pagination
        if p.style in ("page", "offset"):
            poll.params[p.param or p.style] = poll.value
        response = self._request(poll.url, poll.params)
        poll.pages += 1
        table, doc = self._decode(response)
        n = table.num_rows if table is not None else 0
        more = poll.pages < p.max_pages
        if p.style == "next_url":
            nxt = _next_url(doc, p.next_url)
            more = more and bool(nxt)
            if nxt:
                poll.url, poll.params = urljoin(str(response.url), nxt), {}
        elif p.style in ("page", "offset"):
            more = more and n > 0 and (p.page_size is None or n >= p.page_size)
            poll.value += 1 if p.style == "page" else (p.page_size or n)
        else:
            more = False
        if not more:
            self._poll = None
        return table

    def _request(self, url: str, params: dict[str, Any]) -> httpx.Response:
        c = self.config
        problem = ""
        for attempt in range(c.retries + 1):
            if c.rate_limit:
                wait = self._last_request + 1.0 / c.rate_limit - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            self._last_request = time.monotonic()
            delay = min(c.backoff_max, c.backoff * 2**attempt)
            try:
                response = self.client.request(c.method, url, params=params or None, json=c.body)
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if response.status_code < 400:
                    self.requests += 1
                    return response
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in _RETRYABLE:
                    raise ConnectorError(
                        f"http source: {c.method} {url} failed with {problem} "
                        "(check url, params and headers; this status is not retried)"
                    )
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    delay = min(c.backoff_max, float(retry_after))
            if attempt < c.retries:
                time.sleep(delay)
        raise ConnectorError(
            f"http source: {c.method} {url} still failing after {c.retries} retries: {problem} "
            "(is the API up? raise retries/backoff for flaky APIs)"
        )

    def _decode(self, response: httpx.Response) -> tuple[pa.Table | None, Any]:
        """Records as a table (None if there are none) and the parsed document (for next_url)."""
        content = response.content
        if not content.strip():
            return None, None
        ctype = response.headers.get("Content-Type", "")
        if "ndjson" in ctype or "jsonl" in ctype or "json-seq" in ctype:
            try:
                return pajson.read_json(pa.BufferReader(content)), None
            except pa.ArrowInvalid as e:
                self._reject(content.splitlines(), f"http source: invalid JSON Lines: {e}")
                return None, None
        try:
            doc = orjson.loads(content)
        except orjson.JSONDecodeError as e:
            self._reject([content], f"http source: response is not JSON: {e}")
            return None, None
        try:
            table = records_table(doc, self.config.records)
        except KeyError as e:
            raise ConnectorError(
                f"http source: {response.url}: {e.args[0]} (set records: to the path of the list)"
            ) from e
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            records = dig(doc, self.config.records)
            assert isinstance(records, list)
            self._reject(
                [orjson.dumps(r) for r in records],
                f"http source: records don't fit "
                f"one schema ({e}); fix the API or add a python transform",
            )
            return None, doc
        return table, doc

    def _reject(self, raw: list[bytes], reason: str) -> None:
        """Bad input is data: the raw payload goes to the dead-letter topic."""
        self.ctx.dead_letter(pa.table({"raw": [r.decode("utf-8", "replace") for r in raw]}), reason)


def _next_url(doc: Any, path: str) -> str | None:
    try:
        value = dig(doc, path)
    except KeyError:
        return None
    return value if isinstance(value, str) and value else None
