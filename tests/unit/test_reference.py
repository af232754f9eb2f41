"""The pipeline-file reference comes from the models: the JSON Schema accepts every shipped
scenario and refuses unknown keys, and the README's connector tables equal the generated ones."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from tidelake import reference
from tidelake.cli import app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*/pipeline.yaml")))
def test_the_schema_accepts_every_scenario(
    validator: jsonschema.Draft202012Validator, path: Path
) -> None:
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert not errors, errors


def test_the_schema_refuses_what_the_loader_refuses(
    validator: jsonschema.Draft202012Validator,
) -> None:
    flow = {"source": {"type": "generator", "kind": "movie_ratings"}, "sink": {"type": "console"}}
    assert validator.is_valid({"name": "p", "flows": {"f": flow}})
    assert not validator.is_valid({"name": "p", "flows": {"f": flow}, "mood": 1})
    typo = {**flow, "sink": {"type": "console", "rowz": 3}}
    assert not validator.is_valid({"name": "p", "flows": {"f": typo}})
    unknown = {**flow, "source": {"type": "telepathy"}}
    assert not validator.is_valid({"name": "p", "flows": {"f": unknown}})
    described = validator.schema["$defs"]["BatchSettings"]["properties"]["size"]
    assert described["description"] == "rows per batch at most"


def test_readme_connector_tables_are_the_generated_ones() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- connectors:start -->\n")[1].split("<!-- connectors:end -->")[0]
    assert block == reference.markdown(), "run scripts/readme-connectors"
