"""Produce -> visible in ``tidelake query`` latency of the lake, at a steady input rate.

Three processes on the local Kafka (``tidelake.infra``):

- a producer (child process) sends ``--rate`` records/s (default 10,000) in 100 small
  slices a second to a fresh 1-partition topic; each record (~200 bytes of JSON) carries
  ``produce_ts``, the wall clock (µs) just before it was handed to the Kafka client;
- the flow ``topic -> lake`` (``tidelake run``, commits every ``--max-latency`` s);
- a poller (this process) running ``SELECT max(produce_ts) FROM t`` through the query layer
  (``tidelake.lake.QueryEngine`` — what ``tidelake query``, the API and the dashboard use)
  in a loop, noting when each value first became visible.

One partition, in order: when ``max(produce_ts)`` reaches T, every record produced at or
before T is visible. A record's latency is the time of the first poll that saw a max >= its
``produce_ts``, minus its ``produce_ts``; percentiles are over all records after a warm-up.

    .venv/bin/python bench/lake_latency.py [--rate 10000] [--seconds 60] [--max-latency 1.0]
        [--engine tidelake|spark]
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing as mp
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from tidelake import infra
from tidelake.broker import connect
from tidelake.config import load
from tidelake.errors import QueryError
from tidelake.lake import QueryEngine
from tidelake.sources.generator import generate

TABLE = "lat"

PIPELINE = """\
name: bench_latency_{run}
broker: {broker}
lake: file://{lake}
spark: {{master: "local[2]"}}
flows:
  land:
    source: {{type: topic, topic: {topic}, group: bench.latency.{run}}}
    sink: {{type: lake, table: {table}}}
    batch: {{size: {size}, max_latency: {latency}}}
"""


def produce(broker_url: str, topic: str, rate: int, seconds: float, out: mp.Queue) -> None:
    """Send ``rate`` records/s for ``seconds``; put the produce timestamps (µs) in ``out``."""
    template = generate("transactions", 0, 10_000, 42).drop_columns(["ts"]).to_pylist()
    broker = connect(broker_url)
    producer = broker.producer()
    slices = 100  # per second
    stamps: list[int] = []
    t0 = time.time()
    sent = 0
    while True:
        now = time.time()
        if now - t0 >= seconds:
            break
        due = int((now - t0) * rate) - sent
        if due > 0:
            values = []
            for i in range(sent, sent + due):
                ts = time.time_ns() // 1000
                rec = template[i % len(template)] | {"seq": i, "produce_ts": ts}
                values.append(orjson.dumps(rec))
                stamps.append(ts)
            producer.produce(topic, values)
            sent += due
        time.sleep(max(0.0, 1 / slices - (time.time() - now)))
    producer.flush()
    producer.close()
    broker.close()
    out.put(stamps)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=10_000, help="records per second")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10, help="seconds not counted")
    parser.add_argument("--max-latency", type=float, default=1.0, help="flow commit interval")
    parser.add_argument("--batch-size", type=int, default=100_000)
    parser.add_argument(
        "--engine", choices=["tidelake", "spark"], default="tidelake",
        help="the flow's engine (spark: local[2]; give it --warmup 30 for its start-up)",
    )  # fmt: skip
    args = parser.parse_args()

    broker_url = infra.up(["kafka"])["kafka"]
    run = uuid.uuid4().hex[:8]
    topic = f"bench.latency.{run}"
    broker = connect(broker_url)
    broker.create_topic(topic, 1)
    broker.close()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        path.write_text(
            PIPELINE.format(
                run=run,
                broker=broker_url,
                lake=Path(tmp) / "lake",
                topic=topic,
                table=TABLE,
                size=args.batch_size,
                latency=args.max_latency,
            )
        )
        pipeline = load(path)
        log = open(Path(tmp) / "flow.log", "wb")  # noqa: SIM115
        flow = subprocess.Popen(
            [sys.executable, "-m", "tidelake.cli", "run", str(path), "--engine", args.engine],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        # let the flow join its group and create nothing yet: the first record creates the table
        time.sleep(5)
        stamps_q: mp.Queue = mp.Queue()
        producer = mp.Process(
            target=produce, args=(broker_url, topic, args.rate, args.seconds, stamps_q)
        )
        producer.start()
        seen: list[tuple[float, int]] = []  # (poll time µs, max produce_ts µs) when it grew
        query_times: list[float] = []
        engine = QueryEngine(pipeline)
        last = -1
        started = time.time()
        stamps: list[int] | None = None
        try:
            while True:
                if stamps is None and not stamps_q.empty():
                    stamps = stamps_q.get()
                if stamps is not None and last >= stamps[-1]:
                    break
                if time.time() - started > args.seconds + 60:
                    raise SystemExit("timed out waiting for the last record to become visible")
                if flow.poll() is not None:
                    raise SystemExit((Path(tmp) / "flow.log").read_text()[-2000:])
                q0 = time.perf_counter()
                try:
                    value = engine.sql(f"SELECT max(produce_ts) AS m FROM {TABLE}")["m"][0]
                    m = value.as_py() if value.is_valid else -1
                except QueryError:
                    m = -1  # table not created yet
                query_times.append(time.perf_counter() - q0)
                now = time.time_ns() // 1000
                if m > last:
                    seen.append((now, m))
                    last = m
                time.sleep(0.01)
        finally:
            engine.close()
            flow.send_signal(signal.SIGTERM)
            flow.wait(60)
            log.close()
            producer.join(30)
        assert stamps is not None

    maxima = [m for _, m in seen]
    cutoff = stamps[0] + int(args.warmup * 1_000_000)
    latencies = []
    for ts in stamps:
        if ts < cutoff:
            continue
        i = bisect.bisect_left(maxima, ts)
        latencies.append((seen[i][0] - ts) / 1_000_000)
    print(
        f"rate {args.rate:,}/s for {args.seconds:.0f} s ({len(stamps):,} records, "
        f"{len(latencies):,} after {args.warmup:.0f} s warm-up), commits every "
        f"{args.max_latency:g} s"
    )
    print(
        f"  produce -> visible in query: p50 {pct(latencies, 0.5):.2f} s  "
        f"p90 {pct(latencies, 0.9):.2f} s  p99 {pct(latencies, 0.99):.2f} s  "
        f"max {max(latencies):.2f} s"
    )
    print(
        f"  poll query (SELECT max(produce_ts)) p50 {pct(query_times, 0.5) * 1000:.0f} ms  "
        f"p99 {pct(query_times, 0.99) * 1000:.0f} ms  ({len(query_times):,} polls, "
        f"{len(seen)} visible advances)"
    )


if __name__ == "__main__":
    main()
