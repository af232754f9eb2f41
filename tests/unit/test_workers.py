"""Several workers per flow: what validate refuses (with the fix), what users see of
each worker (console, /api/flows), and the schedules running beside supervised workers."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

from tidelake.checks import check
from tidelake.runtime.console import progress_line, render
from tidelake.runtime.metrics import FlowMetrics, read_all
from tidelake.serve.status import _flow_status

PIPELINE = """\
name: p
flows:
  ok:
    workers: 3
    source: {type: topic, topic: events}
    transforms: [{type: sql, query: "SELECT * FROM batch"}]
    sink: {type: lake, table: events}
  windowed:
    workers: 2
    source: {type: topic, topic: events}
    transforms:
      - {type: window, time: ts, size: 1m, by: [k], aggregates: {n: count(*)}}
    sink: {type: table, table: counts}
  partitioned:
    workers: 2
    source: {type: topic, topic: events}
    transforms:
      - {type: window, time: ts, size: 1m, by: [k], partitioned: true, aggregates: {n: count(*)}}
    sink: {type: lake, table: counts}
  to_topic:
    workers: 2
    source: {type: topic, topic: events}
    transforms:
      - {type: window, time: ts, size: 1m, by: [k], partitioned: true, aggregates: {n: count(*)}}
    sink: {type: topic, topic: counts}
  generated:
    workers: 2
    source: {type: generator, kind: transactions, limit: 10}
    sink: {type: s3, path: file://out}
  fanned:
    workers: 2
    source: {type: topic, topic: events}
    sink: {type: lake, table: "ev_{kind}"}
"""


def test_validate_refuses_workers_where_they_cannot_split_the_flow(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE)
    from tidelake.config import load

    lines = [line for line in check(load(path), path) if ".workers:" in line]
    assert lines == [
        f"{path}:9: flows.windowed.workers: the window (transforms.0) spans all partitions, "
        "so N workers would not equal one; key the input topic by the window's `by` columns "
        "(e.g. the `key:` of the topic sink writing it) and set `partitioned: true` on the "
        "window, or set workers: 1",
        f"{path}:21: flows.to_topic.workers: a window transform (transforms.0) stores its "
        "bookkeeping per partition with the sink's checkpoint, which a topic sink keeps in one "
        "record per flow; use a lake or table sink for several workers, or set workers: 1",
        f"{path}:27: flows.generated.workers: a generator source cannot be split between "
        "workers; read from a topic (its partitions are what workers share) or set workers: 1",
        f"{path}:27: flows.generated.workers: this s3 sink keeps one writer per flow; use a lake "
        "or topic sink, or a table sink on a SQL database, for several workers, or set workers: 1",
        f"{path}:31: flows.fanned.workers: a lake table template (fan-out) takes one worker; "
        "set workers: 1",
    ]


def test_console_and_api_show_each_workers_partitions_and_lag(tmp_path: Path) -> None:
    for worker, parts in (("h-1.0", {"ev/0": 12, "ev/2": 0}), ("h-1.1", {"ev/1": 3})):
        FlowMetrics("land", state="running", worker=worker, partitions=parts).save(tmp_path)
    raw = read_all(tmp_path)
    status = [_flow_status(r, time.time()) for r in raw]
    assert [(s.flow, s.worker, s.partitions) for s in status] == [
        ("land", "h-1.0", {"ev/0": 12, "ev/2": 0}),
        ("land", "h-1.1", {"ev/1": 3}),
    ]
    metrics = [FlowMetrics.load(r) for r in raw]
    console = Console(width=200, record=True)
    console.print(render(metrics))
    table = console.export_text()
    assert "worker" in table and "partitions (lag)" in table
    assert "h-1.0" in table and "ev/0:12 ev/2:0" in table and "ev/1:3" in table
    assert " worker h-1.1 [ev/1:3] running: " in progress_line(metrics[1])


def test_run_with_workers_starts_the_schedules_too(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        """\
name: p
flows:
  land:
    workers: 2
    source: {type: topic, topic: events}
    sink: {type: table, table: events}
  nightly:
    source: {type: query, sql: "SELECT 1 AS one"}
    sink: {type: table, table: nightly}
schedules:
  nightly: {cron: "0 3 * * *", flow: nightly}
"""
    )
    cmd = [sys.executable, "-m", "tidelake.cli", "run", str(tmp_path / "p.yaml")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    announced = threading.Event()

    def read() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("schedule nightly: nightly at '0 3 * * *'; not yet run"):
                announced.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert announced.wait(60), "no schedule announced:\n" + "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        reader.join(5)
    assert proc.returncode == 0, "".join(lines)
