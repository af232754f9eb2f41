"""API load: GROUP BY latency over a 1M-row lake table through ``POST /api/query``, through the
PostgreSQL wire endpoint (psycopg, a SCRAM login) and on bare DuckDB (``QueryEngine`` in this
process); NDJSON ingest rate; with ``--clients``/``--query-clients``, many clients at once.

Runs a real uvicorn server with ``--pg-port`` (loopback, random ports, token set) on a fresh
lake in a temp dir and drives it with httpx and psycopg from this process::

    .venv/bin/python bench/api_load.py [--rows 1000000] [--queries 50] [--ingest 200000]

Concurrency mode (``bench.load_clients``: one thread and one keep-alive connection per
client, a 503 retried after its ``Retry-After``) replaces the one-client runs above::

    .venv/bin/python bench/api_load.py --rows 400000 --query-clients 16 --clients 20 \
        [--client-batch 500] [--duration 20] [--distinct]

``--distinct`` gives every query request its own text, so no result is reused.

Besides client-side p50/p95 it prints the server-side p50 (``elapsed_ms`` in the responses)
and the server process's CPU time per query, which stays comparable when other work shares
the machine (the load average is printed too: wall-clock latencies are only comparable at
similar load).
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pyarrow as pa

if __package__ in (None, ""):  # run as bench/api_load.py: the repo root holds ``bench``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import load_clients
from tidelake.broker.embedded import EmbeddedBroker
from tidelake.config import load
from tidelake.lake import QueryEngine
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.serve.users import Users
from tidelake.sinks.lake import LakeSink, LakeSinkConfig

TOKEN = "bench-token"
ANALYST, PASSWORD = "analyst", "bench password 0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVER = """
import sys
from tidelake.config import load
from tidelake.serve.server import serve
serve(load(sys.argv[1]), "127.0.0.1", int(sys.argv[2]), pg_port=int(sys.argv[3]))
"""
GROUP_BY = (
    "SELECT kind, count(*) AS n, avg(amount) AS avg_amount, max(ts) AS last "
    "FROM events GROUP BY kind ORDER BY kind"
)


def build(root: Path, rows: int) -> Path:
    path = root / "pipeline.yaml"
    path.write_text("name: bench\nflows: {}\nserve: {ingest: [bench.in]}\n")
    pipeline = load(path)
    sink = LakeSink(LakeSinkConfig.model_validate({"type": "lake", "table": "events"}))
    sink.open(FlowContext("load", pipeline, FlowMetrics("load"), lambda: None))  # type: ignore[arg-type,return-value]
    rng = np.random.default_rng(7)
    t0 = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp() * 1_000_000)
    step = 250_000
    for start in range(0, rows, step):
        n = min(step, rows - start)
        sink.write(
            pa.table(
                {
                    "id": pa.array(np.arange(start, start + n), pa.int64()),
                    "ts": pa.array(
                        t0 + np.arange(start, start + n) * 1_000_000, pa.timestamp("us")
                    ),
                    "kind": pa.array(rng.choice(["click", "view", "buy", "share"], n)),
                    "user_id": pa.array(rng.integers(0, 50_000, n), pa.int64()),
                    "amount": pa.array(rng.random(n) * 100),
                }
            ),
            {},
        )
    sink.close()
    return path


def cpu_ms(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``), in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentiles(ms: list[float]) -> str:
    ms = sorted(ms)
    return f"p50 {statistics.median(ms):.1f} ms, p99 {ms[max(0, round(len(ms) * 0.99) - 1)]:.1f} ms"


def timed(run: object, n: int) -> list[float]:
    """Wall ms of ``n`` calls of ``run`` after one warm-up call."""
    run()  # type: ignore[operator]
    out = []
    for _ in range(n):
        t = time.perf_counter()
        run()  # type: ignore[operator]
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--ingest", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=0, help="concurrent ingest clients")
    ap.add_argument("--client-batch", type=int, default=500, help="records per ingest request")
    ap.add_argument("--query-clients", type=int, default=0, help="concurrent query clients")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per concurrent phase")
    ap.add_argument(
        "--distinct", action="store_true", help="query clients send no query text twice"
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = build(Path(tmp), args.rows)
        print(f"lake: {args.rows:,} rows written in {time.perf_counter() - started:.1f}s")
        Users(load(path)).add(ANALYST, "viewer", PASSWORD)
        port, pg_port = free_port(), free_port()
        env = dict(os.environ, TIDELAKE_API_TOKEN=TOKEN)
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(path), str(port), str(pg_port)],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=60) as c:
                for _ in range(200):
                    try:
                        if c.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.1)
                first = time.perf_counter()
                r = c.post("/api/query", json={"sql": GROUP_BY})
                r.raise_for_status()
                cold = (time.perf_counter() - first) * 1000
                print(f"first query (cold: plan + bind): {cold:.1f} ms")
                if args.clients or args.query_clients:
                    concurrent(args, c.base_url, proc.pid, Path(tmp))
                    return
                latencies, server = [], []
                cpu0 = cpu_ms(proc.pid)
                for _ in range(args.queries):
                    t = time.perf_counter()
                    r = c.post("/api/query", json={"sql": GROUP_BY})
                    r.raise_for_status()
                    latencies.append((time.perf_counter() - t) * 1000)
                    server.append(r.json()["elapsed_ms"])
                cpu = (cpu_ms(proc.pid) - cpu0) / args.queries
                latencies.sort()
                p95 = latencies[int(len(latencies) * 0.95) - 1]
                p50 = statistics.median(latencies)
                print(
                    f"/api/query GROUP BY over {args.rows:,} rows: p50 {p50:.1f} ms, "
                    f"p95 {p95:.1f} ms, server-side p50 {statistics.median(server):.1f} ms, "
                    f"server CPU {cpu:.1f} ms/query (n={args.queries}, "
                    f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
                )

                with QueryEngine(load(path)) as engine:
                    bare = timed(lambda: engine.sql(GROUP_BY), args.queries)
                dsn = f"host=127.0.0.1 port={pg_port} user={ANALYST} password='{PASSWORD}'"
                with psycopg.connect(dsn) as pg:
                    wire = timed(lambda: pg.execute(GROUP_BY).fetchall(), args.queries)
                api = timed(lambda: c.post("/api/query", json={"sql": GROUP_BY}), args.queries)
                print(f"GROUP BY over {args.rows:,} rows, side by side (n={args.queries} each):")
                print(f"  bare DuckDB (QueryEngine.sql, in process): {percentiles(bare)}")
                print(f"  pg-wire (psycopg, simple query):           {percentiles(wire)}")
                print(f"  POST /api/query (httpx):                   {percentiles(api)}")

                line = (
                    b'{"user_id": %d, "kind": "click", "amount": 12.5, "ts": "2024-05-01T00:00"}\n'
                )
                body = b"".join(line % i for i in range(args.batch))
                headers = {"content-type": "application/x-ndjson"}
                sent = 0
                t = time.perf_counter()
                while sent < args.ingest:
                    r = c.post("/api/ingest/bench.in", content=body, headers=headers)
                    r.raise_for_status()
                    sent += r.json()["accepted"]
                elapsed = time.perf_counter() - t
                print(
                    f"ingest NDJSON: {sent:,} records in {elapsed:.2f}s = "
                    f"{sent / elapsed:,.0f} records/s ({args.batch:,} per request, "
                    f"{len(body) / 1e6:.2f} MB bodies, embedded log)"
                )
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def concurrent(args: argparse.Namespace, url: httpx.URL, pid: int, root: Path) -> None:
    """The concurrency mode: query clients, then ingest clients, each for ``--duration``."""
    print(f"server {pid}, {os.cpu_count()} CPUs")
    if args.query_clients:
        n = itertools.count()  # --distinct: no two requests send the same text (none reused)
        run = load_clients.run(
            str(url), AUTH, args.query_clients, args.duration, pid,
            lambda c: load_clients.query(
                c, GROUP_BY.replace("events", f"events WHERE ts IS NOT NULL OR {next(n)} < 0")
                if args.distinct else GROUP_BY,
            ),
        )  # fmt: skip
        same = "distinct texts" if args.distinct else "the same text (results reused)"
        print(f"{args.query_clients} query clients, GROUP BY over {args.rows:,} rows, {same}:")
        print("  " + run.summary("queries"))
    if args.clients:
        line = b'{"user_id": %d, "kind": "click", "amount": 12.5, "ts": "2024-05-01T00:00"}\n'
        body = b"".join(line % i for i in range(args.client_batch))
        topic = "bench.in"
        run = load_clients.run(
            str(url), AUTH, args.clients, args.duration, pid,
            lambda c: load_clients.ingest(c, topic, body), load_clients.accepted,
        )  # fmt: skip
        landed = sum(EmbeddedBroker(str(root / ".tidelake/log.db")).end_offsets(topic).values())
        print(f"{args.clients} ingest clients, {args.client_batch} NDJSON records per request:")
        print("  " + run.summary("records", per_request=args.client_batch))
        answered = run.items + run.warm_items
        print(f"  in the log: {landed:,} records, answered 2xx (warm-up included): {answered:,}")
        if landed != answered:
            raise SystemExit("the log does not hold exactly the accepted records")


if __name__ == "__main__":
    main()
