"""pyiceberg's private API is used in lake/pyiceberg_internals.py only, and pyiceberg is bounded
below its next minor version (where private names may change)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

SRC = Path(__file__).resolve().parents[2] / "src" / "tidelake"
ADAPTER = SRC / "lake" / "pyiceberg_internals.py"
PRIVATE = {"IcebergTables"}  # the SQL catalog's own ORM table


def _private_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyiceberg"):
            found += [a.name for a in node.names if a.name.startswith("_") or a.name in PRIVATE]
        if isinstance(node, ast.Constant) and node.value == "_iceberg_type_filter":
            found.append(node.value)
    return found


def test_private_pyiceberg_names_live_in_the_adapter_only() -> None:
    assert _private_uses(ADAPTER)
    for path in SRC.rglob("*.py"):
        if path != ADAPTER:
            assert not _private_uses(path), f"{path}: use tidelake.lake.pyiceberg_internals"


def test_pyiceberg_has_an_upper_bound() -> None:
    project = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["project"]
    (spec,) = [r for r in project["optional-dependencies"]["lake"] if r.startswith("pyiceberg")]
    assert any(s.operator == "<" for s in Requirement(spec).specifier)
