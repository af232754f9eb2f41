"""N concurrent HTTP clients against a running server, for ``bench/api_load.py``.

Each client is a thread with its own keep-alive ``httpx.Client``; all start together and
send back to back for ``duration`` seconds. A 503 is retried after its ``Retry-After`` (what a
well-behaved client does), and the request's latency runs from its first send to its 2xx, so
refusals show up as latency. The server's CPU is its own plus its children's (the query
workers, live and reaped) from ``/proc``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

Send = Callable[[httpx.Client], httpx.Response]
"""One request."""


def ingest(client: httpx.Client, topic: str, body: bytes) -> httpx.Response:
    """One NDJSON ingest request."""
    return client.post(
        f"/api/ingest/{topic}", content=body, headers={"content-type": "application/x-ndjson"}
    )


def accepted(response: httpx.Response) -> int:
    """Records an ingest answer accepted."""
    return int(response.json()["accepted"])


def query(client: httpx.Client, sql: str) -> httpx.Response:
    """One ``POST /api/query``."""
    return client.post("/api/query", json={"sql": sql})


def _ticks(path: str, fields: slice) -> int:
    try:
        stat = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(v) for v in stat[fields])


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid``, its reaped children and its live children (one level)."""
    ticks = _ticks(f"/proc/{pid}/stat", slice(11, 15))  # utime stime cutime cstime
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            ticks += _ticks(f"/proc/{child}/stat", slice(11, 13))
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """What one phase measured."""

    clients: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    retries: int = 0
    items: int = 0
    warm_items: int = 0
    """Items of each client's first (warm-up, untimed) request."""
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)

    def summary(self, what: str, per_request: int = 1) -> str:
        ms = np.array(self.latencies_ms)
        n = len(ms)
        p50, p99 = np.percentile(ms, [50, 99]) if n else (float("nan"),) * 2
        rate = self.items / self.seconds
        return (
            f"{self.items:,} {what} in {self.seconds:.1f} s = {rate:,.0f} {what}/s; "
            f"{n:,} requests ({n / self.seconds:,.1f}/s), p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
            f"503 retried: {self.retries}; server CPU {self.server_cpu_s:.1f} s "
            f"({self.server_cpu_s / self.seconds:.2f} cores, "
            f"{self.server_cpu_s * 1000 / max(n, 1):.1f} ms per request), client CPU "
            f"{self.client_cpu_s:.1f} s; load average {self.load[0]:.2f} -> {self.load[1]:.2f}"
        )


def run(
    url: str,
    headers: dict[str, str],
    clients: int,
    duration: float,
    server_pid: int,
    send: Send,
    items: Callable[[httpx.Response], int] | None = None,
) -> Run:
    """``clients`` threads calling ``send`` for ``duration`` s; ``items`` counts a 2xx
    response's items (default 1)."""
    count = items or (lambda _: 1)
    result = Run(clients, duration)
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop = threading.Event()
    failures: list[str] = []

    def patient(c: httpx.Client) -> tuple[httpx.Response, int]:
        """``send`` until the answer is not a 503 (or the phase ends); (answer, retries)."""
        r, retries = send(c), 0
        while r.status_code == 503 and not stop.is_set():
            retries += 1
            time.sleep(float(r.headers.get("retry-after", "1")))
            r = send(c)
        return r, retries

    def client() -> None:
        mine: list[float] = []
        retries = got = warm_items = 0
        try:
            with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
                warm, _ = patient(c)  # the connection and the server's first-use paths
                warm.raise_for_status()
                warm_items = count(warm)
                start.wait(600)
                while not stop.is_set():
                    t = time.perf_counter()
                    r, tries = patient(c)
                    retries += tries
                    if r.status_code == 503:
                        break
                    if r.is_error:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                        break
                    mine.append((time.perf_counter() - t) * 1000)
                    got += count(r)
        except Exception as e:
            failures.append(repr(e))
            start.abort()
        with lock:
            result.latencies_ms += mine
            result.retries += retries
            result.items += got
            result.warm_items += warm_items

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait(600)
    load0, cpu0, own0 = os.getloadavg()[0], tree_cpu_s(server_pid), time.process_time()
    t0 = time.perf_counter()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - t0
    result.server_cpu_s = tree_cpu_s(server_pid) - cpu0
    result.client_cpu_s = time.process_time() - own0
    result.load = (load0, os.getloadavg()[0])
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, first: {failures[0]}")
    return result


__all__ = ["Run", "accepted", "ingest", "query", "run", "tree_cpu_s"]
