"""CDC throughput and commit-to-topic latency: native vs Debezium (Kafka Connect), on
PostgreSQL (pgoutput) or MySQL/MariaDB (the binlog: ``--database mysql``).

    .venv/bin/python bench/cdc_latency.py [--backlog 100000] [--rate 200] [--seconds 20]
                                          [--engines native,debezium] [--database postgres]

Everything runs on local services started through ``tidelake.infra`` (PostgreSQL or
MariaDB, Kafka, Kafka Connect + Debezium), in a fresh database.

- **latency (both)**: single-row transactions at ``--rate``/s for ``--seconds``; latency of
  a change = time a tight consumer receives it from the topic - its commit time
  (``source.ts_ms``, PostgreSQL's clock; same host). For the native engine the topic is
  the one the flow ``cdc -> topic`` writes (per-table topic, Debezium envelope values), for
  Debezium the connector's own topic. Median and p99.
- **throughput (native)**: then ``--backlog`` inserts (transactions of 1,000 rows) are
  committed while the flow is stopped (its slot exists); the flow is restarted and timed
  until the last record is in Kafka: changes/s = backlog / (last received - flow start).

With ``--database mysql`` both engines are measured the same way, the binlog's timestamps
having whole seconds only: each row carries the client's clock just before its commit
(``sent_ms``, same host), latency = receipt - ``sent_ms``; throughput = ``--backlog`` inserts
(multi-row transactions of 1,000) committed while the engine runs, changes/s = backlog /
(last received - first insert).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg

from tidelake import infra
from tidelake.broker import connect
from tidelake.config import loads
from tidelake.db import mysql_connect
from tidelake.runtime.runner import FlowRunner
from tidelake.sources.cdc import drop_slot
from tidelake.sources.cdc.debezium import ConnectClient

PIPELINE = """\
name: cdcbench{tag}
broker: {kafka}
database: "{database}"
flows:
  publish:
    source: {{type: cdc, tables: [public.ratings], topic_prefix: n{tag}, snapshot: never,
              poll_interval: 0.02}}
    sink: {{type: topic, topic: "{{topic}}", key: key, value: envelope}}
    batch: {{size: 10000, max_latency: 0.05}}
"""


def fresh_database(server: str) -> str:
    name = f"cdcbench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = f"{server.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            "CREATE TABLE ratings (id BIGSERIAL PRIMARY KEY, user_id INT, movieid INT NOT NULL,"
            " rating DOUBLE PRECISION NOT NULL, ts INT NOT NULL,"
            " event_time TIMESTAMP DEFAULT now())"
        )
    return url


def drop_database(server: str, url: str) -> None:
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def insert_backlog(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        for start in range(0, n, 1000):
            c.execute(
                "INSERT INTO ratings (user_id, movieid, rating, ts) SELECT i %% 611, i %% 9742,"
                " (i %% 10) / 2.0, 1700000000 + i FROM generate_series(%s::int, %s::int) i",
                (start, min(start + 999, n - 1)),
            )


def trickle(url: str, rate: float, seconds: float) -> int:
    """Single-row transactions at ``rate`` per second; returns how many were committed."""
    n, start = 0, time.monotonic()
    with psycopg.connect(url, autocommit=True) as c:
        while (elapsed := time.monotonic() - start) < seconds:
            c.execute(
                "INSERT INTO ratings (user_id, movieid, rating, ts) VALUES (1, %s, 4.5, 0)", (n,)
            )
            n += 1
            time.sleep(max(0.0, n / rate - (time.monotonic() - start)))
        del elapsed
    return n


def source_ts_ms(env: dict[str, Any]) -> float:
    """The commit time the database stamped on a change."""
    return float(env["source"]["ts_ms"])


def consume_latencies(
    kafka: str,
    topic: str,
    expected: int,
    stop_after: float,
    commit_ms: Callable[[dict[str, Any]], float] = source_ts_ms,
) -> tuple[list[float], float]:
    """Receive-time - commit-time (ms) per record, and the wall time of the last receipt."""
    broker = connect(kafka)
    broker.create_topic(topic)
    consumer = broker.consumer(f"bench-{uuid.uuid4().hex[:6]}", [topic])
    lat: list[float] = []
    last = 0.0
    deadline = time.monotonic() + stop_after
    try:
        while len(lat) < expected and time.monotonic() < deadline:
            batch = consumer.poll(10_000, 0.01)
            now = time.time() * 1000
            for v in batch.values:
                if v is None:
                    continue
                env = orjson.loads(v)
                env = env.get("payload", env)
                lat.append(now - commit_ms(env))
            if len(batch):
                last = time.time()
    finally:
        consumer.close()
        broker.close()
    return lat, last


def collect(kafka: str, topic: str, args: argparse.Namespace, out: list[float]) -> None:
    out += consume_latencies(kafka, topic, 10**9, args.seconds + 5)[0]


def summary(lat: list[float]) -> str:
    if not lat:
        return "no records"
    q = statistics.quantiles(lat, n=100)
    return f"median {statistics.median(lat):.0f} ms, p99 {q[98]:.0f} ms (n={len(lat)})"


def run_flow(pipeline_text: str, workdir: Path) -> tuple[FlowRunner, threading.Thread]:
    pipeline = loads(pipeline_text, workdir / "pipeline.yaml")
    runner = FlowRunner(pipeline, "publish", threading.Event())
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while runner.metrics.state != "running":
        if not thread.is_alive():
            raise SystemExit(f"flow failed: {runner.metrics.last_error}")
        time.sleep(0.05)
    return runner, thread


def native(urls: dict[str, str], args: argparse.Namespace, workdir: Path) -> None:
    url = fresh_database(urls["postgres"])
    tag = uuid.uuid4().hex[:6]
    text = PIPELINE.format(tag=tag, kafka=urls["kafka"], database=url)
    topic = f"n{tag}.public.ratings"
    slot = f"tidelake_cdcbench{tag}_publish"
    runner, thread = run_flow(text, workdir)  # creates slot and publication
    result: list[float] = []
    consumer = threading.Thread(target=collect, args=(urls["kafka"], topic, args, result))
    consumer.start()
    time.sleep(2)  # the consumer joins its group before the first change
    n = trickle(url, args.rate, args.seconds)
    consumer.join()
    print(f"native latency @ {args.rate:g}/s x {n}: {summary(result)}")
    runner.stop.set()
    thread.join()
    insert_backlog(url, args.backlog)
    started = time.time()
    runner, thread = run_flow(text, workdir)
    lat, last = consume_latencies(urls["kafka"], topic, n + args.backlog, stop_after=600)
    took = last - started
    print(
        f"native throughput: {len(lat) - n:,} backlog changes commit->topic in {took:.2f}s = "
        f"{(len(lat) - n) / took:,.0f} changes/s"
    )
    runner.stop.set()
    thread.join()
    drop_slot(url, slot, slot)
    drop_database(urls["postgres"], url)


def debezium(urls: dict[str, str], args: argparse.Namespace) -> None:
    from tidelake.sources.cdc import CdcConfig
    from tidelake.sources.cdc.debezium import connector_config

    url = fresh_database(urls["postgres"])
    tag = uuid.uuid4().hex[:6]
    cfg = CdcConfig.model_validate(
        {
            "type": "cdc",
            "engine": "debezium",
            "tables": ["public.ratings"],
            "topic_prefix": f"d{tag}",
            "snapshot": "never",
        }
    )
    name, slot = f"cdcbench-{tag}", f"cdcbench_{tag}"
    client = ConnectClient(urls["connect"])
    client.put_config(name, connector_config(cfg, url, slot, slot))
    client.wait_running(name, 120)
    topic = f"d{tag}.public.ratings"
    result: list[float] = []
    consumer = threading.Thread(target=collect, args=(urls["kafka"], topic, args, result))
    consumer.start()
    time.sleep(1)
    n = trickle(url, args.rate, args.seconds)
    consumer.join()
    print(f"debezium latency @ {args.rate:g}/s x {n}: {summary(result)}")
    client.delete(name)
    client.close()
    time.sleep(3)
    drop_slot(url, slot, slot)
    drop_database(urls["postgres"], url)


MYSQL_PIPELINE = """\
name: cdcbench{tag}
broker: {kafka}
database: "{database}"
flows:
  publish:
    source: {{type: cdc, engine: mysql, tables: [ratings], topic_prefix: n{tag}, snapshot: never,
              poll_interval: 0.02}}
    sink: {{type: topic, topic: "{{topic}}", key: key, value: envelope}}
    batch: {{size: 10000, max_latency: 0.05}}
"""


def sent_ms(env: dict[str, Any]) -> float:
    """The client's clock just before the row's commit (the binlog has whole seconds only)."""
    after = env["after"]
    return float((orjson.loads(after) if isinstance(after, str) else after)["sent_ms"])


def mysql_insert(url: str, rows: int, per_commit: int, rate: float | None = None) -> None:
    """``rows`` inserts in transactions of ``per_commit`` rows, paced at ``rate`` rows/s."""
    conn = mysql_connect(url)
    start = time.monotonic()
    with conn.cursor() as cur:
        for n in range(0, rows, per_commit):
            values = [
                (i % 9742, (i % 10) / 2, time.time_ns() // 1_000_000)
                for i in range(n, min(n + per_commit, rows))
            ]
            cur.executemany(
                "INSERT INTO ratings (movieid, rating, sent_ms) VALUES (%s, %s, %s)", values
            )
            if rate is not None:
                time.sleep(max(0.0, (n + per_commit) / rate - (time.monotonic() - start)))
    conn.close()


def mysql(urls: dict[str, str], engine: str, args: argparse.Namespace, workdir: Path) -> None:
    """Latency and throughput of one engine on a fresh MariaDB database."""
    from tidelake.sources.cdc import CdcConfig
    from tidelake.sources.cdc.debezium import mysql_connector_config

    tag = uuid.uuid4().hex[:6]
    server, db = urls["mariadb"], f"cdcbench_{tag}"
    admin = mysql_connect(server)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    url = f"{server.rsplit('/', 1)[0]}/{db}"
    with mysql_connect(url).cursor() as cur:
        cur.execute(
            "CREATE TABLE ratings (id BIGINT AUTO_INCREMENT PRIMARY KEY, movieid INT NOT NULL,"
            " rating DOUBLE NOT NULL, sent_ms BIGINT NOT NULL)"
        )
    prefix = f"{engine[0]}{tag}"
    topic = f"{prefix}.{db}.ratings"
    if engine == "native":
        runner, thread = run_flow(
            MYSQL_PIPELINE.format(tag=tag, kafka=urls["kafka"], database=url), workdir
        )
    else:
        cfg = CdcConfig.model_validate(
            {
                "type": "cdc",
                "engine": "debezium",
                "tables": ["ratings"],
                "topic_prefix": prefix,
                "snapshot": "never",
            }
        )
        name = f"cdcbench-{tag}"
        client = ConnectClient(urls["connect"])
        bootstrap = urls["kafka"].removeprefix("kafka://")
        client.put_config(name, mysql_connector_config(cfg, url, name, bootstrap))
        client.wait_running(name, 120)
    n = int(args.rate * args.seconds)
    result: list[float] = []
    consumer = threading.Thread(
        target=lambda: result.extend(
            consume_latencies(urls["kafka"], topic, n, args.seconds + 60, sent_ms)[0]
        )
    )
    consumer.start()
    time.sleep(2)  # the consumer joins its group before the first change
    mysql_insert(url, n, 1, args.rate)
    consumer.join()
    print(f"mysql {engine} latency @ {args.rate:g}/s x {n}: {summary(result)}")
    started = time.time()
    mysql_insert(url, args.backlog, 1000)
    lat, last = consume_latencies(urls["kafka"], topic, n + args.backlog, 600, sent_ms)
    took = last - started
    print(
        f"mysql {engine} throughput: {len(lat) - n:,} changes commit->topic in {took:.2f}s = "
        f"{(len(lat) - n) / took:,.0f} changes/s"
    )
    if engine == "native":
        runner.stop.set()
        thread.join()
    else:
        client.retire(name)
        client.close()
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE {db}")
    admin.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--engines", default="native,debezium")
    ap.add_argument("--database", choices=["postgres", "mysql"], default="postgres")
    args = ap.parse_args()
    engines = args.engines.split(",")
    database = "mariadb" if args.database == "mysql" else "postgres"
    urls = infra.up([database, "kafka"] + (["connect"] if "debezium" in engines else []))
    workdir = Path(tempfile.mkdtemp(prefix="tidelake-bench-cdc-"))
    for engine in engines:
        if args.database == "mysql":
            mysql(urls, engine, args, workdir)
        elif engine == "native":
            native(urls, args, workdir)
        else:
            debezium(urls, args)


if __name__ == "__main__":
    main()
