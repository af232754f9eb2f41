"""`tidelake cdc drop-slot` frees a retired native CDC flow's slot on real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from tidelake.cli import app


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
