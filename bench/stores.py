"""Rows/s from one topic into Cassandra, MongoDB (FerretDB) and MariaDB.

    .venv/bin/python bench/stores.py [--rows 50000]

Servers come from ``tidelake.infra`` (Cassandra, FerretDB on SQLite, MariaDB). The input is
``--rows`` generator ``user_profiles`` records in an embedded-log topic; each store's flow
reads it from the start (``topic -> sink``, batches of 5,000) and is timed from start to its
last commit.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from pathlib import Path

from tidelake import infra
from tidelake.broker import connect
from tidelake.config import loads
from tidelake.db import mysql_connect
from tidelake.runtime.runner import FlowRunner
from tidelake.sources.generator import generate

SINKS = {
    "cassandra": "{{type: cassandra, url: '{cassandra}/bench{tag}', table: users, key: [_offset]}}",
    "mongodb": "{{type: mongodb, url: '{mongodb}', database: bench{tag}, collection: users, key: [_offset]}}",
    "mariadb": "{{type: table, table: users, mode: upsert, key: [_offset], database: '{mysql}'}}",
}


def _run_until(pipeline_text: str, base: Path, flow: str, done: callable) -> float:  # type: ignore[valid-type]
    pipeline = loads(pipeline_text, base / "pipeline.yaml")
    stop = threading.Event()
    runner = FlowRunner(pipeline, flow, stop)
    started = time.perf_counter()
    thread = threading.Thread(target=runner.run)
    thread.start()
    while not done():  # type: ignore[operator]
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    urls = infra.up(["cassandra", "mongodb", "mariadb"])
    tag = uuid.uuid4().hex[:8]
    base = Path(tempfile.mkdtemp(prefix="tidelake-stores-"))
    broker_url = f"embedded:///{base}/log.db"
    broker = connect(broker_url)
    broker.create_topic("users", 1)
    producer = broker.producer()
    import orjson

    for start in range(0, args.rows, 10_000):
        rows = generate("user_profiles", start, min(10_000, args.rows - start)).to_pylist()
        producer.produce("users", [orjson.dumps(r, default=str) for r in rows])
    producer.flush()
    admin = mysql_connect(urls["mariadb"])
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE bench{tag}")
    mysql = urls["mariadb"].rsplit("/", 1)[0] + f"/bench{tag}"
    for store, sink in SINKS.items():
        text = f"""\
name: bench{tag}{store}
broker: {broker_url}
flows:
  land:
    source: {{type: topic, topic: users}}
    sink: {sink.format(tag=tag, mysql=mysql, **urls)}
    batch: {{size: 5000, max_latency: 1.0}}
"""

        def done(store: str = store) -> bool:
            return _landed(store, tag, urls, mysql) >= args.rows

        seconds = _run_until(text, base / store, "land", done)
        print(
            f"{store:10} {args.rows / seconds:10,.0f} rows/s ({args.rows:,} rows, {seconds:.1f} s)"
        )


def _landed(store: str, tag: str, urls: dict[str, str], mysql: str) -> int:
    try:
        if store == "cassandra":
            from cassandra.cluster import Cluster

            host, _, port = urls["cassandra"].removeprefix("cassandra://").partition(":")
            cluster = Cluster([host], port=int(port))
            try:
                row = (
                    cluster.connect()
                    .execute(f"SELECT sum(next_offset) FROM bench{tag}.tidelake_checkpoints")
                    .one()
                )
                return int(row[0] or 0)
            finally:
                cluster.shutdown()
        if store == "mongodb":
            import pymongo

            client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(urls["mongodb"])
            try:
                docs = list(client[f"bench{tag}"]["_tidelake_checkpoints"].find({}))
                return sum(int(p["next"]) for d in docs for p in d["positions"])  # type: ignore[index, union-attr, call-overload]
            finally:
                client.close()
        with mysql_connect(mysql).cursor() as cur:
            cur.execute("SELECT COALESCE(SUM(next_offset), 0) FROM _tidelake_checkpoints")
            return int(cur.fetchone()[0])
    except Exception:  # noqa: BLE001 - nothing landed yet
        return 0


if __name__ == "__main__":
    main()
