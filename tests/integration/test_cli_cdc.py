"""`tidelake cdc drop-slot` retires a CDC flow on real PostgreSQL (and Kafka Connect)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from tidelake.broker import connect
from tidelake.cli import app
from tidelake.config import loads
from tidelake.sources.cdc.debezium import ConnectClient, connector_config


@pytest.mark.integration
def test_drop_slot_removes_the_flows_slot(tmp_path: Path, postgres_url: str) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        f"name: shop\ndatabase: {postgres_url}\nflows:\n  capture:\n"
        "    source: {type: cdc, engine: native, tables: [public.orders]}\n"
        "    sink: {type: console}\n"
    )
    slot = "tidelake_shop_capture"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    try:
        result = CliRunner().invoke(app, ["cdc", "drop-slot", str(pipeline), "--flow", "capture"])
        assert result.exit_code == 0, result.output
        assert f"slot {slot} dropped" in result.output
        with psycopg.connect(postgres_url) as conn:
            left = conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
        assert left == (0,)
        again = CliRunner().invoke(app, ["cdc", "drop-slot", str(pipeline), "--flow", "capture"])
        assert "did not exist" in again.output
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s",
                (slot,),
            )


@pytest.mark.integration
@pytest.mark.skipif(os.environ.get("TIDELAKE_SKIP_CONNECT") == "1", reason="no Kafka Connect")
def test_drop_slot_retires_a_debezium_connector(
    tmp_path: Path, postgres_url: str, unique: str
) -> None:
    """The connector is deleted with its offsets: registered again, it snapshots again."""
    from tidelake import infra

    urls = infra.up(["connect"])
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
        conn.execute("INSERT INTO orders SELECT i, 'item' || i FROM generate_series(1, 5) i")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        f"name: shop{unique}\nbroker: {urls['kafka']}\ndatabase: {postgres_url}\nflows:\n"
        "  capture:\n"
        f"    source: {{type: cdc, engine: debezium, tables: [public.orders], "
        f'topic_prefix: r{unique}, connect_url: "{urls["connect"]}"}}\n'
        "    sink: {type: console}\n"
    )
    cfg = loads(pipeline.read_text(), pipeline).flows["capture"].source
    slot = f"tidelake_shop{unique}_capture"
    name = slot.replace("_", "-")
    client = ConnectClient(urls["connect"])
    topic = f"r{unique}.public.orders"
    try:
        for snapshots in (1, 2):
            client.put_config(name, connector_config(cfg, postgres_url, slot, slot))  # type: ignore[arg-type]
            client.wait_running(name, 120)
            _wait_for_records(urls["kafka"], topic, 5 * snapshots)
            result = CliRunner().invoke(
                app, ["cdc", "drop-slot", str(pipeline), "--flow", "capture"]
            )
            assert result.exit_code == 0, result.output
            assert f"connector {name} stopped, offsets reset, deleted" in result.output
            assert f"slot {slot} dropped" in result.output
            assert client.status(name) is None
            with psycopg.connect(postgres_url) as conn:
                left = conn.execute(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
                ).fetchone()
            assert left == (0,)
    finally:
        client.retire(name)
        client.close()


def _wait_for_records(kafka_url: str, topic: str, n: int) -> None:
    broker = connect(kafka_url)
    try:
        consumer = broker.consumer(f"check-{uuid.uuid4().hex[:8]}", [topic])
        seen, deadline = 0, time.monotonic() + 120
        while seen < n and time.monotonic() < deadline:
            seen += len(consumer.poll(100, 1.0))
        consumer.close()
    finally:
        broker.close()
    assert seen == n, f"{topic}: {seen} records, expected {n}"
