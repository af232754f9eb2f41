"""``tidelake validate`` checks what can be checked before running: environment variables
transforms need, transform SQL against the columns sources declare, and every saved query
and panel against the tables' current or declared schemas, all reported as file:line."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidelake.cli import app

runner = CliRunner()

PIPELINE = """\
name: checks
database: sqlite:///out.db
flows:
  gen:
    source: {type: generator, kind: transactions, seed: 1, limit: 10}
    sink: {type: topic, topic: sales}
  land:
    source: {type: topic, topic: sales}
    transforms:
      - type: sql
        query: SELECT transaction_id, amount * 2 AS double_amount, ts, _offset FROM batch
      - {type: pseudonymize, fields: [transaction_id]}
    sink: {type: table, table: doubled}
queries:
  per_minute: >
    SELECT date_trunc('minute', ts) AS minute, sum(double_amount) AS total
    FROM doubled GROUP BY ALL
dashboard:
  - title: Totals
    sql: SELECT transaction_id, double_amount FROM doubled
    chart: bar
    x: transaction_id
    y: double_amount
"""
KEY = "validate-checks-key-0123456789"


def validate(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["validate", str(path)])
    return result.exit_code, result.output.replace(str(path), "P")


def test_a_consistent_pipeline_is_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDELAKE_PSEUDONYMIZE_KEY", KEY)
    code, out = validate(tmp_path, PIPELINE)
    assert code == 0 and "ok" in out, out


def test_a_missing_key_is_reported_at_its_transform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIDELAKE_PSEUDONYMIZE_KEY", raising=False)
    code, out = validate(tmp_path, PIPELINE)
    assert code == 2
    assert "P:12: flows.land.transforms.1.key_env: environment variable " in out, out
    assert "TIDELAKE_PSEUDONYMIZE_KEY is not set" in out


def test_transform_sql_naming_a_column_the_source_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDELAKE_PSEUDONYMIZE_KEY", KEY)
    code, out = validate(tmp_path, PIPELINE.replace("amount * 2", "price * 2"))
    assert code == 2
    assert "P:11: flows.land.transforms.0.query: Binder Error" in out and '"price"' in out, out


def test_queries_and_panels_against_declared_and_current_schemas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDELAKE_PSEUDONYMIZE_KEY", KEY)
    broken = PIPELINE.replace("sum(double_amount)", "sum(amount)").replace(
        "    y: double_amount", "    y: total"
    )
    code, out = validate(tmp_path, broken)
    assert code == 2
    assert "P:15: queries.per_minute: Binder Error" in out and '"amount"' in out, out
    assert "P:23: dashboard.0.y: column 'total' is not in the panel's result" in out, out

    # a table that exists is checked as it is now: here its ts landed as text
    with sqlite3.connect(tmp_path / "out.db") as db:
        db.execute("CREATE TABLE doubled (transaction_id TEXT, double_amount REAL, ts TEXT)")
        db.execute("INSERT INTO doubled VALUES ('a', 1.0, '2024-01-01 00:00:00.5')")
    code, out = validate(tmp_path, PIPELINE)
    assert code == 2
    assert "P:15: queries.per_minute: Binder Error" in out and "date_trunc" in out, out
