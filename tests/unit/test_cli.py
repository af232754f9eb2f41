"""The command line on embedded defaults (nothing running)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from tidelake import __version__
from tidelake.broker.embedded import EmbeddedBroker
from tidelake.cli import app

runner = CliRunner()

PIPELINE = """\
name: cli
database: sqlite:///out.db
flows:
  land:
    source: {type: topic, topic: events}
    sink: {type: table, table: events}
"""


def _pipeline(tmp_path: Path, text: str = PIPELINE) -> Path:
    p = tmp_path / "pipeline.yaml"
    p.write_text(text)
    return p


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_every_command_explains_itself_with_an_example() -> None:
    for cmd in (
        ["run"],
        ["validate"],
        ["query"],
        ["serve"],
        ["demo"],
        ["topics", "tail"],
        ["infra", "up"],
        ["lake", "describe"],
        ["cdc", "drop-slot"],
        ["dlq", "list"],
        ["dlq", "show"],
        ["dlq", "redrive"],
    ):
        result = runner.invoke(app, [*cmd, "--help"])
        assert result.exit_code == 0, cmd
        assert "Example:" in result.output, cmd


def test_validate_reports_file_line_and_key(tmp_path: Path) -> None:
    p = _pipeline(tmp_path, PIPELINE.replace("table: events}", "table: events, mood: happy}"))
    result = runner.invoke(app, ["validate", str(p)])
    assert result.exit_code == 2
    assert f"{p}:6: flows.land.sink.mood: unknown key" in result.output.replace("\n", "")


def test_topics_create_list_tail(tmp_path: Path) -> None:
    p = _pipeline(tmp_path)
    assert (
        runner.invoke(app, ["topics", "create", str(p), "events", "--partitions", "3"]).exit_code
        == 0
    )
    broker = EmbeddedBroker(str(tmp_path / ".tidelake" / "log.db"))
    broker.producer().produce("events", [orjson.dumps({"n": i}) for i in range(5)])
    listed = runner.invoke(app, ["topics", "list", str(p)])
    assert "events" in listed.output and "3" in listed.output
    tail = runner.invoke(app, ["topics", "tail", str(p), "events", "-n", "5"])
    assert tail.exit_code == 0
    assert sorted(json.loads(line)["value"]["n"] for line in tail.output.splitlines()) == [
        0,
        1,
        2,
        3,
        4,
    ]
    missing = runner.invoke(app, ["topics", "tail", str(p), "evnets"])  # a typo
    assert missing.exit_code == 2 and "no topic 'evnets' in the log" in missing.output
    assert "evnets" not in broker.topics(), "reading a topic must not create it"


def test_help_texts_show_what_they_name() -> None:
    """Scenario lists come from the shipped scenarios; brackets are text, not markup."""
    for cmd in (["init"], ["demo"]):
        text = " ".join(runner.invoke(app, [*cmd, "--help"]).output.split())
        for name in ("datalake", "markets", "movies", "reviews", "stock", "users"):
            assert name in text, (cmd, name)
    assert "'tidelake[spark]'" in runner.invoke(app, ["run", "--help"]).output
    # a paragraph wraps at the terminal's width, not where the docstring's lines end
    wide = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output.splitlines()
    assert any("runs as N supervised processes in one consumer group" in ln for ln in wide), wide


def test_run_lands_and_query_reads_back(tmp_path: Path) -> None:
    p = _pipeline(
        tmp_path,
        PIPELINE.replace(
            "source: {type: topic, topic: events}",
            "source: {type: generator, kind: transactions, seed: 3, limit: 500}",
        ),
    )
    result = runner.invoke(app, ["run", str(p)])
    assert result.exit_code == 0, result.output
    out = runner.invoke(
        app, ["query", str(p), "SELECT count(*) AS n FROM events", "--format", "csv"]
    )
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[-1] == "500"
    p.write_text(p.read_text() + "queries:\n  total: SELECT count(*) AS n FROM events\n")
    saved = runner.invoke(app, ["query", str(p), "total", "--format", "csv"])
    assert saved.exit_code == 0, saved.output
    assert saved.output.splitlines()[-1] == "500"
    refused = runner.invoke(app, ["query", str(p), "DELETE FROM events"])
    assert refused.exit_code == 2


def test_the_demo_banner_names_a_tidelake_command_that_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tidelake.demo import command

    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # as after `make demo`: the venv is not on PATH
    shown = command()
    assert shown != "tidelake" or shutil.which("tidelake")
    ran = subprocess.run([*shlex.split(shown), "version"], capture_output=True, text=True)
    assert ran.returncode == 0 and __version__ in ran.stdout, ran.stderr
