"""scenarios/markets on real infrastructure: the same ``pipeline.yaml`` that ``tidelake demo
markets`` runs on embedded defaults, switched by environment variables to MariaDB (a fresh
database), Debezium's MySQL connector on Kafka Connect, Apache Kafka and an Iceberg lake on
the local S3 server.

The market API (its clock 30 times as fast as the wall clock: a 1-minute candle every 2 s)
is polled into MariaDB's ``ticks`` table; once candles flow, the market closes and every
tick must reach ``lake.ticks`` exactly once through the binlog, Debezium and Kafka, counted
through the demo's REST API and then with ``tidelake query``, as a user would.
``TIDELAKE_SKIP_CONNECT=1`` skips it (no Kafka Connect).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from browser import Demo, free_port, wait_for
from real_infra import cli_query, lake_env

from tidelake.demo import _Server
from tidelake.demo.market_api import INSTRUMENTS, create_app
from tidelake.sources.cdc.debezium import ConnectClient
from tidelake.sources.cdc.envelope import default_name

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("TIDELAKE_SKIP_CONNECT") == "1", reason="TIDELAKE_SKIP_CONNECT=1"
    ),
]

BUDGET = 90.0  # seconds from start to every tick in the lake


def test_markets_on_mariadb_debezium_kafka_and_s3(
    mysql_url: str, unique: str, tmp_path: Path
) -> None:
    from tidelake import infra

    services = infra.up(["connect", "s3"])
    api, market = free_port(), free_port()
    feed = _Server(create_app(rate=2.0, seed=17, speed=30.0), market)
    feed.start()
    feed.wait_ready()
    name = f"markets_{unique}"
    env = {
        "MARKET_API": f"http://127.0.0.1:{market}",
        "PIPELINE_NAME": name,
        "TIDELAKE_BROKER": services["kafka"],
        "TIDELAKE_DATABASE": mysql_url,
        "MARKETS_DB": mysql_url.rsplit("/", 1)[1],
        "CDC_ENGINE": "debezium",
        "KAFKA_CONNECT": services["connect"],
        "CDC_TOPIC_PREFIX": f"mk{unique}",
        **lake_env(services, unique, tmp_path, skip_s3=False),
    }
    path = tmp_path / "markets" / "pipeline.yaml"
    started = time.monotonic()
    demo = Demo("markets", path.parent, api, free_port(), "--no-dashboard", env=env)
    counts = (
        "SELECT (SELECT count(*) FROM db.ticks) AS db, (SELECT count(*) FROM lake.ticks) AS lake,"
        " (SELECT count(DISTINCT trade_id) FROM lake.ticks) AS trades"
    )
    try:
        wait_for(
            lambda: demo.alive() and "1-minute candles flowing into the lake" in demo.output,
            BUDGET,
            "candles in the lake",
        )
        feed.stop()  # the market closes: the ticks table stops growing
        with httpx.Client(base_url=f"http://127.0.0.1:{api}", timeout=30) as client:

            def landed() -> list[int] | None:
                demo.alive()
                r = client.post("/api/query", json={"sql": counts})
                assert r.status_code == 200, r.text
                row: list[int] = r.json()["rows"][0]
                return row if row[0] == row[1] > 0 else None

            db, _, _ = wait_for(landed, BUDGET - (time.monotonic() - started), "every tick")
            time.sleep(2)  # a duplicate would land now
            assert landed() == [db, db, db], "a tick reached the lake twice"
        print(f"{db} ticks in MariaDB and the lake after {time.monotonic() - started:.1f}s")
    finally:
        code = demo.interrupt()
        feed.stop()
        connect = ConnectClient(services["connect"])  # MySQL: no slot, only the connector
        connect.retire(default_name(name, "capture").replace("_", "-"))
        connect.close()
    assert code == 0, demo.output
    assert "demo stopped" in demo.output

    # the lake holds exactly MariaDB's trades; candles of every symbol, no more trades than ticks
    (row,) = cli_query(
        path,
        os.environ | env,
        "SELECT (SELECT count(*) FROM db.ticks d FULL JOIN lake.ticks l"
        " ON d.trade_id = l.trade_id WHERE d.trade_id IS NULL OR l.trade_id IS NULL"
        " OR d.price <> l.price), count(DISTINCT symbol), sum(trades) FROM lake.candles",
    )
    missing, symbols, trades = (int(v) for v in row.split(","))
    assert missing == 0 and symbols == len(INSTRUMENTS) and 0 < trades <= db, row
