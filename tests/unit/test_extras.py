"""A missing optional dependency ends a command with the pip command of its extra."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidelake import registry
from tidelake.cli import app
from tidelake.errors import ConfigError
from tidelake.extras import MODULES

runner = CliRunner()


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``modules`` (and what tidelake imported of them) unimportable."""
    for name in list(sys.modules):
        if name.partition(".")[0] in modules or name.startswith(
            ("tidelake.broker.kafka", "tidelake.lake", "tidelake.sinks.lake", "tidelake.serve")
        ):
            monkeypatch.delitem(sys.modules, name)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _pipeline(tmp_path: Path, head: str, sink: str = "{type: table, table: t}") -> Path:
    p = tmp_path / "pipeline.yaml"
    p.write_text(
        f"name: x\n{head}\nflows:\n  f:\n"
        f"    source: {{type: generator, kind: movie_ratings, limit: 5}}\n    sink: {sink}\n"
    )
    return p


TABLE = "{type: table, table: t}"
CASSANDRA = "{type: cassandra, url: 'cassandra://127.0.0.1:1/k', table: t, key: [user_id]}"
MONGODB = "{type: mongodb, url: 'mongodb://127.0.0.1:1/d', collection: c}"


@pytest.mark.parametrize(
    ("blocked", "head", "sink", "command", "extra"),
    [
        ("confluent_kafka", "broker: kafka://127.0.0.1:1", TABLE, ["topics", "list", "P"], "kafka"),
        ("psycopg", "database: postgresql://u@127.0.0.1:1/db", TABLE, ["run", "P"], "postgres"),
        ("pymysql", "database: mysql://u@127.0.0.1:1/db", TABLE, ["run", "P"], "mysql"),
        ("pyiceberg", "", TABLE, ["query", "P", "SELECT 1"], "lake"),
        ("uvicorn", "", TABLE, ["serve", "P"], "serve"),
        ("streamlit", "", TABLE, ["dashboard", "P"], "dashboard"),
        ("cassandra", "", CASSANDRA, ["run", "P"], "cassandra"),
        ("pymongo", "", MONGODB, ["run", "P"], "mongodb"),
    ],
)
def test_a_command_names_the_missing_extra(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    blocked: str,
    head: str,
    sink: str,
    command: list[str],
    extra: str,
) -> None:
    _without(monkeypatch, blocked)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name, *a: None if name == blocked else find_spec(name)
    )
    p = str(_pipeline(tmp_path, head, sink))
    result = runner.invoke(app, [p if arg == "P" else arg for arg in command])
    assert result.exit_code in (1, 2), result.output  # 1: a flow failed with the message
    assert f"pip install 'tidelake[{extra}]'" in " ".join(result.output.split())


def test_the_registry_names_the_extra_of_a_connector(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "pyiceberg")
    with pytest.raises(
        ConfigError, match=r"the 'lake' sink needs the 'lake' extra.*tidelake\[lake\]"
    ):
        registry.lookup("sink", "lake")


def test_every_extra_is_declared_in_pyproject() -> None:
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    for extra in set(MODULES.values()):
        assert f"\n{extra} = [" in text, extra
