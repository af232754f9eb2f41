"""docs/architecture.md: its connector example runs as written, and the code's principle
citations point at principles the document has."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"


def test_the_connector_example_runs(tmp_path: Path) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (tmp_path / "example.py").write_text(code)
    out = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(25, 576)"


def test_principle_citations_point_at_the_document() -> None:
    principles = set(re.findall(r"^(\d)\. \*\*", DOC.read_text(), re.M))
    cited = []
    for path in (ROOT / "src").rglob("*.py"):
        text = " ".join(path.read_text().split())
        assert "DESIGN principle" not in text, f"{path}: cite docs/architecture.md"
        cited += re.findall(r"docs/architecture\.md, principle (\d)", text)
    assert cited and set(cited) <= principles
