"""The ground floor: pipeline files (config) load without the runtime, and the shared
vocabulary imports nothing of tidelake."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tidelake


def _loaded_after(module: str) -> set[str]:
    code = (
        f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('tidelake')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_config_does_not_import_the_runtime() -> None:
    assert not {m for m in _loaded_after("tidelake.config") if m.startswith("tidelake.runtime")}


def test_config_imports_nothing_of_the_runtime_even_lazily() -> None:
    """Not even inside a function: the column type names of schema: are vocabulary."""
    tree = ast.parse((Path(tidelake.__file__).parent / "config.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m and m.startswith("tidelake.runtime")}


def test_the_vocabulary_imports_nothing_of_tidelake() -> None:
    assert _loaded_after("tidelake.vocabulary") == {
        "tidelake",
        "tidelake.errors",
        "tidelake.vocabulary",
    }
