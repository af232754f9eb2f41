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
from typing import Any, Literal

import httpx
import orjson
import pyarrow as pa
from httpx_retries import RetryTransport
from pydantic import Field

from tidelake.errors import ConnectorError
from tidelake.formats.json import decode_json, split_lines
from tidelake.http_retry import RETRYABLE, retry_policy
from tidelake.runtime.base import Batch, Checkpoint, ConnectorConfig, FlowContext, Source
from tidelake.sources import pagination
from tidelake.sources.file import dig, records_table
from tidelake.sources.pagination import Pages, Pagination


class _Spaced(httpx.BaseTransport):
    """Every attempt, retries included, at most ``rate`` per second (unset: no limit)."""

    def __init__(self, inner: httpx.BaseTransport, rate: float | None) -> None:
        self.inner, self.rate, self.last = inner, rate, 0.0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.rate:
            wait = self.last + 1.0 / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self.last = time.monotonic()
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


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
        backoff: float = Field(
            0.5, ge=0, description="first retry delay in s, doubled each time (Retry-After wins)"
        )
        backoff_max: float = Field(30.0, ge=0, description="longest retry delay in s")
        timeout: float = Field(30.0, gt=0, description="seconds per request")

    config: Config

    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        self.ctx = ctx
        self.requests = checkpoint.get("requests", 0)
        self.polls = 0
        c = self.config
        retry = retry_policy(c.retries, c.backoff, c.backoff_max)
        self.client = httpx.Client(
            headers={"User-Agent": "tidelake", **c.headers},
            timeout=c.timeout,
            follow_redirects=True,
            transport=RetryTransport(_Spaced(httpx.HTTPTransport(), c.rate_limit), retry=retry),
        )
        self._poll: Pages | None = None
        self._pages = 0
        self._next_poll = 0.0
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
        self.polls += 1
        self._next_poll = now + self.config.interval
        self._poll = pagination.start(self.config.pagination, self.config.url, self.config.params)
        self._pages = 0

    def _fetch_page(self, poll: Pages) -> pa.Table | None:
        """Fetch the poll's next page and advance (or end) the poll."""
        response = self._request(poll.url, poll.params)
        self._pages += 1
        table, doc = self._decode(response)
        rows = table.num_rows if table is not None else 0
        more = poll.advance(str(response.url), doc, rows)
        if not more or self._pages >= self.config.pagination.max_pages:
            self._poll = None
        return table

    def _request(self, url: str, params: dict[str, Any]) -> httpx.Response:
        """One successful response; retries (transport) happen below this call."""
        c = self.config
        try:
            response = self.client.request(c.method, url, params=params or None, json=c.body)
        except httpx.TransportError as e:
            problem = f"{type(e).__name__}: {e}"
        else:
            if response.status_code < 400:
                self.requests += 1
                return response
            problem = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code not in RETRYABLE:
                raise ConnectorError(
                    f"http source: {c.method} {url} failed with {problem} "
                    "(check url, params and headers; this status is not retried)"
                )
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
            lines, _ = split_lines(content)  # never pyarrow's reader: a leading null crashes it
            table, bad = decode_json(lines)
            for i, reason in bad:
                self._reject([lines[i]], f"http source: invalid JSON Lines record: {reason}")
            return (table if table.num_rows else None), None
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
