"""The http source against a real local HTTP server (a thread in the test process)."""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pyarrow as pa
import pytest

from tidelake.config import Pipeline
from tidelake.errors import ConnectorError
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.sources.http import HttpSource

ITEMS = [{"id": i, "title": f"movie {i}"} for i in range(23)]


class Api(BaseHTTPRequestHandler):
    calls: list[tuple[float, str]] = []
    failures_left = 0
    retry_after: list[str] = []  # Retry-After of the next 503s of /busy

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: object, ctype: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        Api.calls.append((time.monotonic(), self.path))
        if url.path == "/pages":  # ?page=N&per_page=K
            page, size = int(q.get("page", 1)), int(q.get("per_page", 10))
            self._send(200, {"data": {"items": ITEMS[(page - 1) * size : page * size]}})
        elif url.path == "/offset":  # ?offset=N&limit=K
            off, lim = int(q["offset"]), int(q["limit"])
            self._send(200, ITEMS[off : off + lim])
        elif url.path == "/cursor":
            cur = int(q.get("cursor", 0))
            nxt = f"/cursor?cursor={cur + 10}" if cur + 10 < len(ITEMS) else None
            self._send(200, {"results": ITEMS[cur : cur + 10], "next": nxt})
        elif url.path == "/flaky":
            if Api.failures_left > 0:
                Api.failures_left -= 1
                self._send(500, {"error": "boom"})
            else:
                self._send(200, ITEMS[:3])
        elif url.path == "/busy":
            if Api.retry_after:
                self.send_response(503)
                self.send_header("Retry-After", Api.retry_after.pop(0))
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._send(200, ITEMS[:3])
        elif url.path == "/ndjson":
            body = b"".join(json.dumps(r).encode() + b"\n" for r in ITEMS[:5])
            self._send(200, body, "application/x-ndjson")
        elif url.path == "/ndjson-poison":  # a leading null segfaults pyarrow 26's reader
            body = b'null\n{"id": 1}\n{"id": 2, "x": NaN}\n\n{"id": 3}\n[4]\n'
            self._send(200, body, "application/x-ndjson")
        elif url.path == "/auth":
            if self.headers.get("Authorization") != "Bearer s3cret":
                self._send(401, {"error": "no token"})
            else:
                self._send(200, [{"ok": True}])
        elif url.path == "/mixed":
            self._send(200, [{"a": 1}, {"a": "x"}])
        else:
            self._send(404, {"error": "not found"})


@pytest.fixture
def api() -> Iterator[str]:
    Api.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def open_source(
    tmp_path: Path,
    dead: list[tuple[pa.Table, str]] | None = None,
    checkpoint: dict[str, int] | None = None,
    **cfg: object,
) -> HttpSource:
    pipeline = Pipeline(name="t", flows={}, base_dir=tmp_path)
    ctx = FlowContext(
        "f",
        pipeline,
        FlowMetrics("f"),
        broker_factory=lambda: None,  # type: ignore[arg-type,return-value]
        dead_letter=lambda rows, reason: (dead if dead is not None else []).append((rows, reason)),
    )
    src = HttpSource(HttpSource.Config.model_validate({"type": "http", **cfg}))
    src.open(ctx, checkpoint or {})
    return src


def drain(src: HttpSource, size: int = 100) -> tuple[list[dict[str, object]], dict[str, int]]:
    rows: list[dict[str, object]] = []
    positions: dict[str, int] = {}
    while (batch := src.read(size, 0.05)) is not None:
        rows += batch.table.to_pylist()
        positions.update(batch.positions)
    src.close()
    return rows, positions


def test_page_pagination_with_records_path(api: str, tmp_path: Path) -> None:
    src = open_source(
        tmp_path,
        url=f"{api}/pages",
        records="data.items",
        max_polls=1,
        pagination={"style": "page", "page_size": 10, "size_param": "per_page"},
    )
    rows, positions = drain(src, size=4)
    assert rows == ITEMS
    assert positions == {"requests": 3}  # 10 + 10 + 3 (short page ends the poll)
    assert [p for _, p in Api.calls] == [f"/pages?per_page=10&page={i}" for i in (1, 2, 3)]


def test_offset_pagination_stops_on_empty_page(api: str, tmp_path: Path) -> None:
    src = open_source(
        tmp_path,
        url=f"{api}/offset",
        params={"limit": 5},
        max_polls=1,
        pagination={"style": "offset"},
    )
    rows, positions = drain(src)
    assert rows == ITEMS and positions == {"requests": 6}


def test_next_url_pagination_and_max_pages(api: str, tmp_path: Path) -> None:
    rows, _ = drain(
        open_source(
            tmp_path,
            url=f"{api}/cursor",
            records="results",
            max_polls=1,
            pagination={"style": "next_url", "next_url": "next"},
        )
    )
    assert rows == ITEMS
    rows, _ = drain(
        open_source(
            tmp_path,
            url=f"{api}/cursor",
            records="results",
            max_polls=1,
            pagination={"style": "next_url", "max_pages": 2},
        )
    )
    assert rows == ITEMS[:20]


def test_retries_5xx_with_backoff_then_succeeds(api: str, tmp_path: Path) -> None:
    Api.failures_left = 2
    src = open_source(tmp_path, url=f"{api}/flaky", max_polls=1, backoff=0.05)
    rows, positions = drain(src)
    assert rows == ITEMS[:3] and positions == {"requests": 1}
    times = [t for t, _ in Api.calls]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.05 and times[2] - times[1] >= 0.1  # exponential


def test_retry_after_in_seconds_and_as_an_http_date_is_honoured(api: str, tmp_path: Path) -> None:
    Api.retry_after = [email.utils.formatdate(time.time() + 3, usegmt=True), "1"]
    src = open_source(tmp_path, url=f"{api}/busy", max_polls=1, backoff=0.01)
    rows, positions = drain(src)
    assert rows == ITEMS[:3] and positions == {"requests": 1}
    times = [t for t, _ in Api.calls]
    assert len(times) == 3
    assert times[1] - times[0] >= 1.5  # a date 2-3 s ahead (whole seconds), not the 10 ms backoff
    assert times[2] - times[1] >= 0.95  # "1": one second


def test_gives_up_after_retries_and_does_not_retry_4xx(api: str, tmp_path: Path) -> None:
    Api.failures_left = 10
    with pytest.raises(ConnectorError, match="after 2 retries"):
        drain(open_source(tmp_path, url=f"{api}/flaky", max_polls=1, retries=2, backoff=0.01))
    Api.calls = []
    with pytest.raises(ConnectorError, match="401"):
        drain(open_source(tmp_path, url=f"{api}/auth", max_polls=1, backoff=0.01))
    assert len(Api.calls) == 1
    rows, _ = drain(
        open_source(
            tmp_path, url=f"{api}/auth", max_polls=1, headers={"Authorization": "Bearer s3cret"}
        )
    )
    assert rows == [{"ok": True}]


def test_rate_limit_spaces_requests(api: str, tmp_path: Path) -> None:
    src = open_source(
        tmp_path,
        url=f"{api}/offset",
        params={"limit": 2},
        max_polls=1,
        rate_limit=20,
        pagination={"style": "offset", "page_size": 2},
    )
    rows, _ = drain(src)
    assert rows == ITEMS
    times = [t for t, _ in Api.calls]
    assert len(times) == 12
    assert times[-1] - times[0] >= 11 / 20 * 0.95  # 20 requests/s (unlimited: ~10 ms in all)


def test_interval_polls_repeatedly_and_counts_requests(api: str, tmp_path: Path) -> None:
    src = open_source(
        tmp_path, checkpoint={"requests": 40}, url=f"{api}/ndjson", interval=0.1, max_polls=3
    )
    started = time.monotonic()
    rows, positions = drain(src)
    assert rows == ITEMS[:5] * 3
    assert positions == {"requests": 43}
    assert time.monotonic() - started >= 0.2


def test_records_that_do_not_fit_a_schema_go_to_dead_letter(api: str, tmp_path: Path) -> None:
    dead: list[tuple[pa.Table, str]] = []
    rows, _ = drain(open_source(tmp_path, dead, url=f"{api}/mixed", max_polls=1))
    assert rows == []
    assert len(dead) == 1 and dead[0][0].column("raw").to_pylist() == ['{"a":1}', '{"a":"x"}']
    assert "schema" in dead[0][1]


def test_bad_json_lines_are_dead_letters_and_the_rest_lands(api: str, tmp_path: Path) -> None:
    dead: list[tuple[pa.Table, str]] = []
    rows, _ = drain(open_source(tmp_path, dead, url=f"{api}/ndjson-poison", max_polls=1))
    assert rows == [{"id": 1}, {"id": 3}]
    assert [d[0].column("raw").to_pylist() for d in dead] == [
        ["null"],
        ['{"id": 2, "x": NaN}'],
        ["[4]"],
    ]
    assert all("invalid JSON Lines record" in reason for _, reason in dead)


def test_wrong_records_path_names_what_exists(api: str, tmp_path: Path) -> None:
    with pytest.raises(ConnectorError, match="found: results, next"):
        drain(open_source(tmp_path, url=f"{api}/cursor", records="items", max_polls=1))
