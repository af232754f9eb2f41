"""Does a lake table stay fast after an hour of one-second commits?

Runs N small appends (default 3,600 — one hour of 1 s micro-batches) through the
lake sink in a tight loop, with maintenance on (compaction + snapshot expiry
every 100 commits by default), and reports:

- append (= one Iceberg commit incl. checkpoint) latency: p50/p95/p99/max, early vs late;
- ``SELECT count(*)`` latency through the query layer after 10 commits and after N
  (first query after a commit = catalog lookup + file planning; repeated = cached);
- files, snapshots and metadata size at the end.

With ``--big-rows 10000000`` it also times count(*) and a GROUP BY over a table of
that many rows (the query layer's performance target: < 1 s each).

    .venv/bin/python bench/lake_commits.py [--commits 3600] [--rows 10] [--no-maintenance]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tidelake.config import loads
from tidelake.lake import QueryEngine
from tidelake.lake.catalog import load_table
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.sinks.lake import LakeSink, LakeSinkConfig

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def batch(i: int, rows: int) -> pa.Table:
    start = i * rows
    offsets = pa.array(range(start, start + rows), pa.int64())
    return pa.table(
        {
            "ts": [T0 + timedelta(seconds=i)] * rows,
            "user": pc.cast(pc.divide(offsets, 7), pa.string()),
            "amount": pc.cast(offsets, pa.float64()),
            "_topic": ["tx"] * rows,
            "_partition": pa.array([0] * rows, pa.int32()),
            "_offset": offsets,
        }
    )


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))]


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def count_latency(engine: QueryEngine, table: str) -> tuple[float, float, int]:
    q = f"SELECT count(*) AS n FROM {table}"
    first = time.perf_counter()
    n = engine.sql(q)["n"][0].as_py()
    first = time.perf_counter() - first
    warm = min(timed(lambda: engine.sql(q)) for _ in range(5))
    return first, warm, n


def commits(base: Path, n: int, rows: int, maintenance: bool) -> None:
    pipeline = loads("name: bench\nflows: {}\n", base / "p.yaml")
    ctx = FlowContext("bench", pipeline, FlowMetrics("bench"), broker_factory=dict)  # type: ignore[arg-type]
    config = {"type": "lake", "table": "tx", "maintenance": {"enabled": maintenance}}
    sink = LakeSink(LakeSinkConfig.model_validate(config))
    sink.open(ctx)
    engine = QueryEngine(pipeline)
    latencies: list[float] = []
    early: tuple[float, float, int] | None = None
    started = time.perf_counter()
    for i in range(n):
        data = batch(i, rows)
        latencies.append(timed(lambda data=data, i=i: sink.write(data, {"tx/0": (i + 1) * rows})))
        if i + 1 == 10:
            early = count_latency(engine, "tx")
    total = time.perf_counter() - started
    late = count_latency(engine, "tx")
    table = load_table(pipeline, "tx")
    meta = Path(table.metadata_location.removeprefix("file://"))
    data_dir = Path(table.location().removeprefix("file://"), "data")
    print(f"maintenance={'on' if maintenance else 'off'}  commits={n}  rows/commit={rows}")
    print(f"  total {total:.1f} s  ({n / total:.0f} commits/s)")
    print(
        f"  append p50 {ms(pct(latencies, 0.5))}  p95 {ms(pct(latencies, 0.95))}  "
        f"p99 {ms(pct(latencies, 0.99))}  max {ms(max(latencies))}"
    )
    print(
        f"  append mean first 100 {ms(statistics.mean(latencies[:100]))}  "
        f"last 100 {ms(statistics.mean(latencies[-100:]))}"
    )
    assert early is not None
    for label, (first, warm, count) in (("after 10", early), (f"after {n}", late)):
        print(f"  count(*) {label:>10}: first {ms(first)}  repeated {ms(warm)}  (n={count})")
    files = sum(1 for _ in table.scan().plan_files())
    print(
        f"  live data files {files}  files on disk {sum(1 for _ in data_dir.iterdir())}  "
        f"snapshots {len(table.snapshots())}  metadata.json {meta.stat().st_size / 1024:.0f} KiB"
    )
    assert late[2] == n * rows, "every row landed exactly once"
    engine.close()


def big(base: Path, rows: int) -> None:
    pipeline = loads("name: big\nflows: {}\n", base / "p.yaml")
    ctx = FlowContext("big", pipeline, FlowMetrics("big"), broker_factory=dict)  # type: ignore[arg-type]
    sink = LakeSink(LakeSinkConfig.model_validate({"type": "lake", "table": "big"}))
    sink.open(ctx)
    step = 1_000_000
    for start in range(0, rows, step):
        offsets = pa.array(range(start, min(rows, start + step)), pa.int64())
        data = pa.table(
            {
                "ts": pc.add(
                    pa.scalar(T0), pc.cast(pc.multiply(offsets, 1_000_000), pa.duration("us"))
                ),
                "user": pc.cast(pc.bit_wise_and(offsets, 1023), pa.string()),
                "amount": pc.cast(offsets, pa.float64()),
            }
        )
        sink.write(data, {"big/0": start + len(offsets)})
    with QueryEngine(pipeline) as engine:
        for q in (
            "SELECT count(*) FROM big",
            "SELECT user, count(*), sum(amount) FROM big GROUP BY user",
            "SELECT date_trunc('day', ts) AS d, avg(amount) FROM big GROUP BY d",
        ):
            engine.sql(q)
            best = min(timed(lambda q=q: engine.sql(q)) for _ in range(3))
            print(f"  {rows:,} rows  {ms(best):>10}  {q}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=3600)
    parser.add_argument("--rows", type=int, default=10, help="rows per commit")
    parser.add_argument("--no-maintenance", action="store_true")
    parser.add_argument("--big-rows", type=int, default=0, help="also time queries over N rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        commits(Path(tmp), args.commits, args.rows, not args.no_maintenance)
    if args.big_rows:
        with tempfile.TemporaryDirectory() as tmp:
            big(Path(tmp), args.big_rows)


if __name__ == "__main__":
    main()
