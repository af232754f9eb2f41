"""The command line with stdout a pipe on a narrow (40 column) non-terminal, as in CI or
``| jq``: machine formats stay whole, tables wrap nothing away, ``run`` reports progress."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tidelake.broker.embedded import EmbeddedBroker

PIPELINE = """\
name: pipes
database: sqlite:///out.db
flows:
  land:
    source: {type: generator, kind: transactions, seed: 3, rate: 100, limit: 650}
    sink: {type: table, table: sales}
  copy:
    source: {type: generator, kind: transactions, seed: 4, limit: 40}
    sink: {type: table, table: copies}
"""
NARROW = os.environ | {"COLUMNS": "40", "TERM": "dumb"}
JQ = shutil.which("jq")
Run = subprocess.CompletedProcess[str]


def tidelake(*args: str) -> Run:
    return subprocess.run(
        [sys.executable, "-m", "tidelake.cli", *args],
        env=NARROW, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def pipe(command: list[str], into: list[str]) -> subprocess.CompletedProcess[bytes]:
    """``command | into``, with stdout a real pipe (not a terminal)."""
    first = subprocess.Popen([sys.executable, "-m", "tidelake.cli", *command], env=NARROW,
                             stdout=subprocess.PIPE)  # fmt: skip
    second = subprocess.run(into, stdin=first.stdout, capture_output=True, timeout=120)
    assert first.stdout is not None
    first.stdout.close()
    assert first.wait(60) == 0
    return second


@pytest.fixture(scope="module")
def landed(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    path = tmp_path_factory.mktemp("pipes") / "pipeline.yaml"
    path.write_text(PIPELINE)
    return path, tidelake("run", str(path))


def test_run_off_a_terminal_prints_progress_lines_and_per_flow_counts(
    landed: tuple[Path, Run],
) -> None:
    _, run = landed
    assert run.returncode == 0, run.stderr
    progress = [ln for ln in run.stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d land ", ln)]
    assert len(progress) >= 2, run.stderr  # 6.5 s at 100 rows/s: lines every 5 s, then the end
    assert "in 0 out 0" not in progress[-1] and "out 650" in progress[-1], progress
    summary = run.stderr.strip().splitlines()[-1]
    assert "rows out per flow: land 650, copy 40" in summary, summary


@pytest.mark.skipif(JQ is None, reason="jq is not installed (scripts/bootstrap --for-tests)")
def test_topics_tail_is_one_json_object_per_line_for_jq(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE)
    broker = EmbeddedBroker(str(tmp_path / ".tidelake" / "log.db"))
    long = "x" * 300  # far wider than the 40 columns
    broker.producer().produce("events", [orjson.dumps({"n": i, "note": long}) for i in range(150)])
    broker.close()
    out = pipe(["topics", "tail", str(path), "events", "-n", "100"], [str(JQ), "-c", "."])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 100
    records = [json.loads(line) for line in lines]
    assert sorted(r["value"]["n"] for r in records) == list(range(100))
    assert all(r["value"]["note"] == long and r["topic"] == "events" for r in records)


@pytest.mark.skipif(JQ is None, reason="jq is not installed (scripts/bootstrap --for-tests)")
def test_query_json_goes_through_jq_with_iso_times(
    landed: tuple[Path, Run],
) -> None:
    path, _ = landed
    sql = "SELECT transaction_id, amount, CAST(ts AS TIMESTAMPTZ) AS ts FROM sales ORDER BY 1"
    out = pipe(["query", str(path), sql, "--format", "json"], [str(JQ), "-s", "."])
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 650
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", rows[0]["ts"]), rows[0]


def test_tables_on_a_narrow_pipe_cut_no_value(
    landed: tuple[Path, Run],
) -> None:
    path, _ = landed
    sql = ("SELECT transaction_id, customer_id, product, category, payment_method, amount, "
           "12345678901234567890 AS big FROM sales ORDER BY 1 LIMIT 3")  # fmt: skip
    out = tidelake("query", str(path), sql)
    assert out.returncode == 0, out.stderr
    assert "…" not in out.stdout
    assert "12345678901234567890" in out.stdout and "T000000000000" in out.stdout, out.stdout


def test_a_syntax_error_names_the_token(
    landed: tuple[Path, Run],
) -> None:
    path, _ = landed
    out = tidelake("query", str(path), "SELEC 1")
    assert out.returncode == 2
    assert 'syntax error at or near "SELEC"' in out.stderr, out.stderr
