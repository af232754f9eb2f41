"""The dashboard script without a browser (Streamlit's AppTest), and the launcher's lifecycle."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from tidelake import config
from tidelake.lake.catalog import namespace, open_catalog
from tidelake.runtime.metrics import FlowMetrics
from tidelake.serve.dashboard import app
from tidelake.serve.dashboard.launch import APP

pytestmark = pytest.mark.integration
PIPELINE = """\
name: shop
flows:
  orders:
    source: {type: generator, kind: transactions}
    sink: {type: lake, table: orders}
dashboard:
  - {title: Revenue, sql: "SELECT sum(amount) AS revenue FROM orders", chart: metric, y: revenue}
  - {title: By category, sql: "SELECT category, sum(amount) AS amount FROM orders GROUP BY 1",
     chart: bar, x: category, y: amount}
  - {title: Orders, sql: "SELECT * FROM orders", chart: table}
  - {title: Bad SQL, sql: "SELECT FROM WHERE", chart: line}
  - {title: Bad column, sql: "SELECT category FROM orders", chart: line, x: category, y: nope}
  - {title: Big orders, sql: "SELECT * FROM orders WHERE amount > 100", chart: table}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE)
    return path


def _land(path: Path, rows: pa.Table) -> None:
    """Append straight through pyiceberg (what the lake sink does, minus checkpoints)."""
    pipeline = config.load(path)
    table = open_catalog(pipeline).create_table_if_not_exists(
        (namespace(pipeline), "orders"), rows.schema
    )
    table.append(rows)


def _run(path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setattr(sys, "argv", [str(APP), str(path)])
    at = AppTest.from_file(str(APP), default_timeout=60)
    return at.run()


def test_panels_and_health(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _pipeline(tmp_path)
    orders = pa.table({"category": ["a", "b", "a"], "amount": [1.5, 2.0, 3.0]})
    _land(path, orders)
    m = FlowMetrics("orders", state="running", records_out=300, errors=2, last_error="boom")
    m.started = time.time() - 10
    m.save(config.load(path).state_dir / "metrics")

    at = _run(path, monkeypatch)

    assert not at.exception, at.exception
    assert at.title[0].value == "shop"
    metrics = {x.label: x.value for x in at.metric}
    assert metrics["revenue"] == "6.5"
    assert metrics["errors"] == "2" and metrics["lag"] == "0"
    assert 25 < float(metrics["records/s"]) <= 30  # 300 records in the 10 s since start
    assert [e.value for e in at.error][0] == "boom", "the flow's last error is shown"
    panel_errors = [e.value for e in at.error][1:]
    assert len(panel_errors) == 2, "each broken panel shows its own error"
    assert "syntax" in panel_errors[0].lower()
    assert "'nope' is not in the result" in panel_errors[1]
    assert len(at.dataframe) == 1 and at.dataframe[0].value.shape == (3, 2)
    assert len(at.get("vega_lite_chart")) == 1
    (empty,) = [i.value.replace("\\", "") for i in at.info]  # the panel says why it is empty
    assert empty == "No rows: the query matched none of the rows of orders (3 rows).", empty


def test_a_new_snapshot_shows_on_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _pipeline(tmp_path)
    at = _run(path, monkeypatch)
    assert any("orders" in e.value for e in at.error), "no table yet: said in the panel"
    _land(
        path,
        pa.table({"category": pa.array([], pa.string()), "amount": pa.array([], pa.float64())}),
    )
    at.run()
    assert "No rows yet: orders is empty" in at.info[0].value.replace("\\", ""), at.info

    _land(path, pa.table({"category": ["a"], "amount": [4.0]}))
    at.run()
    assert {x.label: x.value for x in at.metric}["revenue"] == "4.0"
    _land(path, pa.table({"category": ["b"], "amount": [1.0]}))
    at.run()  # same session, same cached QueryEngine
    assert {x.label: x.value for x in at.metric}["revenue"] == "5.0"


def test_rate_from_successive_snapshots() -> None:
    h = app.FlowHistory()
    h.add({"updated": 100.0, "started": 90.0, "records_out": 100})
    assert h.rate == 10.0  # one snapshot: average since start
    h.add({"updated": 102.0, "records_out": 200})
    h.add({"updated": 102.0, "records_out": 999})  # same snapshot again: ignored
    h.add({"updated": 104.0, "records_out": 300})
    assert h.rate == 50.0
    h.add({"updated": 105.0, "started": 104.5, "records_out": 5})  # the flow restarted
    assert h.rate == 10.0


def _alive(pid: int) -> bool:
    """Running (an exited orphan may linger as a zombie when PID 1 does not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_dashboard_dies_with_its_parent(tmp_path: Path) -> None:
    """The launcher's parent is SIGKILLed (no cleanup at all): Streamlit still goes away."""
    path = _pipeline(tmp_path)
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from tidelake.serve.dashboard.launch import launch
            print(launch({str(path)!r}, port={free_port()}).pid, flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    time.sleep(1)
    assert _alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not _alive(child):
            return
        time.sleep(0.2)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the dashboard outlived its parent")


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """``tidelake dashboard`` (``serve``) gets SIGTERM: it stops Streamlit and exits 0."""
    path, port = _pipeline(tmp_path), free_port()
    code = (
        "from tidelake.serve.dashboard.launch import serve\n"
        f"raise SystemExit(serve({str(path)!r}, {port}))"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_stcore/health").text == "ok":
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) == 0
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/_stcore/health")
    finally:
        parent.kill()
