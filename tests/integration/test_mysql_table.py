"""MariaDB as the pipeline's database: the table sink upserts with ``INSERT ... ON DUPLICATE
KEY UPDATE`` and its positions in the same transaction (kill -9 mid-stream); the query
engine and the dashboard read the tables (the REST API and ``tidelake query`` too:
test_markets_real_infra.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import stores
from streamlit.testing.v1 import AppTest

from tidelake.config import load
from tidelake.db import connect_db
from tidelake.lake.query import QueryEngine
from tidelake.serve.dashboard.launch import APP

pytestmark = pytest.mark.integration


def test_upsert_under_kill_9_then_query(
    tmp_path: Path, unique: str, mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = f'{{type: table, table: users, mode: upsert, key: [id], database: "{mysql_url}"}}'
    db = connect_db(mysql_url)

    def positions() -> int:
        if "_tidelake_checkpoints" not in {str(r[0]) for r in db.execute("SHOW TABLES")}:
            return 0
        rows = db.execute(
            "SELECT COALESCE(SUM(next_offset), 0) FROM _tidelake_checkpoints WHERE flow = %s",
            (f"st_{unique}/land",),
        )
        return int(rows[0][0])  # type: ignore[call-overload]

    try:
        stores.kill_while_streaming(tmp_path, unique, sink, positions)
        rows = db.execute("SELECT id, seq, name, score FROM users")
    finally:
        db.close()
    assert len(rows) == stores.KEYS
    assert {int(r[0]): int(r[1]) for r in rows} == stores.reference()  # type: ignore[call-overload]
    for _, seq, name, score in rows:
        expected = stores.record(int(seq))  # type: ignore[call-overload]
        assert (name, score) == (expected["name"], expected["score"])

    pipeline = tmp_path / "pipeline.yaml"
    text = pipeline.read_text().replace(f"sqlite:///{tmp_path}/state.db", mysql_url)
    panel = "- {title: Users, sql: SELECT count(*) AS n FROM users, chart: metric, y: n}"
    pipeline.write_text(f"{text}dashboard:\n  {panel}\n")
    engine = QueryEngine(load(pipeline))
    try:
        result = engine.sql("SELECT count(*) AS n, max(seq) AS top FROM db.users").to_pylist()
    finally:
        engine.close()
    assert result == [{"n": stores.KEYS, "top": stores.RECORDS - 1}]
    monkeypatch.setattr(sys, "argv", [str(APP), str(pipeline)])
    dashboard = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not dashboard.exception, dashboard.exception
    assert [m.value for m in dashboard.metric if m.label == "n"] == [f"{stores.KEYS:,}"]
