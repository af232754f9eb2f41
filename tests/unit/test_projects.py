"""`tidelake init` and the demo's run folder: copies of the shipped scenarios and template."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidelake.cli import app
from tidelake.config import load
from tidelake.projects import demo_folder, scenario_names

runner = CliRunner()


def test_init_minimal_names_the_pipeline_after_its_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "minimal", str(tmp_path / "shop")])
    assert result.exit_code == 0, result.output
    pipeline = load(tmp_path / "shop" / "pipeline.yaml")
    assert pipeline.name == "shop"
    assert {"ratings_in", "ratings_db"} <= set(pipeline.flows)


def test_init_copies_a_scenario_with_its_data_files(tmp_path: Path) -> None:
    assert {"movies", "datalake", "stock", "users"} <= set(scenario_names())
    assert runner.invoke(app, ["init", "movies", str(tmp_path / "m")]).exit_code == 0
    assert {"pipeline.yaml", "movies.csv", "schema.sql"} <= {
        p.name for p in (tmp_path / "m").iterdir()
    }
    assert load(tmp_path / "m" / "pipeline.yaml").name == "movies"


def test_init_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    result = runner.invoke(app, ["init", "minimal", str(tmp_path)])
    assert result.exit_code == 2
    assert "already exists and is not empty" in " ".join(result.output.split())
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert not (tmp_path / "pipeline.yaml").exists()


def test_unknown_name_lists_the_choices(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "nope", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "choose one of: datalake, markets, movies" in " ".join(result.output.split())


def test_demo_folder_refreshes_files_and_keeps_state(tmp_path: Path) -> None:
    pipeline = demo_folder("stock", tmp_path / "run")
    assert pipeline == (tmp_path / "run" / "pipeline.yaml").resolve()
    (pipeline.parent / ".tidelake").mkdir()
    (pipeline.parent / ".tidelake" / "stock.db").write_text("state")
    pipeline.write_text("edited")
    demo_folder("stock", tmp_path / "run")
    assert load(pipeline).name == "stock"
    assert (pipeline.parent / ".tidelake" / "stock.db").read_text() == "state"


def test_scenarios_come_from_TIDELAKE_SCENARIOS(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "pipeline.yaml").write_text("name: mine\nflows: {}\n")
    monkeypatch.setenv("TIDELAKE_SCENARIOS", str(tmp_path))
    assert scenario_names() == ["mine"]
    assert load(demo_folder("mine", tmp_path / "run")).name == "mine"
