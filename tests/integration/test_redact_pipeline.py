"""Personal data planted in 1,000 reviews never reaches the lake, the dead-letter topic or the
logs: a real ``tidelake run`` (file -> redact -> validate -> lake), then all three searched."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tidelake.broker import connect
from tidelake.config import load
from tidelake.demo.review_texts import corpus
from tidelake.lake import QueryEngine
from tidelake.runtime import dead_letters

pytestmark = pytest.mark.integration
PLANTED = 1000
BAD_RATINGS = 50

PIPELINE = """
name: pii
flows:
  reviews:
    source: {type: file, path: reviews.jsonl}
    transforms:
      - {type: redact, fields: [text, title]}
      - {type: validate, rules: [{column: rating, type: int, min: 1, max: 5}]}
    sink: {type: lake, table: reviews}
    batch: {size: 500}
"""


def _tidelake(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tidelake.cli", *args]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _alnum(text: str) -> str:
    return re.sub(r"[^0-9a-z@.]", "", text.lower())


def _leaks(values: list[str], texts: list[str]) -> list[str]:
    found = "|".join(_alnum(t) for t in texts)  # "|" is not in _alnum: no match spans two texts
    return [v for v in values if _alnum(v) in found]


def test_planted_personal_data_reaches_no_store_and_no_log(tmp_path: Path) -> None:
    texts, planted, clean = corpus(PLANTED)
    rows = [
        {
            "id": i,
            "title": f"avis de {v[0]}",
            "text": t,
            "rating": 9 if i < BAD_RATINGS else 1 + i % 5,
        }
        for i, (t, v) in enumerate(zip(texts, planted, strict=True))
    ] + [{"id": PLANTED + i, "title": "avis", "text": t, "rating": 3} for i, t in enumerate(clean)]
    (tmp_path / "reviews.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)

    run = _tidelake("run", "pipeline.yaml", cwd=tmp_path)
    pipeline = load(tmp_path / "pipeline.yaml")
    with QueryEngine(pipeline) as engine:
        lake = engine.sql("SELECT * FROM lake.reviews").to_pylist()
    broker = connect(pipeline.url(pipeline.broker))
    letters = [x.value for x in dead_letters.read(broker, "pii.reviews.dlq")]
    broker.close()
    assert len(lake) == 2 * PLANTED - BAD_RATINGS
    assert len(letters) == BAD_RATINGS
    values = [v for vs in planted for v in vs]
    assert _leaks(values, _strings(lake)) == []
    assert _leaks(values, _strings(letters)) == []
    assert _leaks(values, (run.stdout + run.stderr).splitlines()) == []
    assert "<EMAIL>" in json.dumps(letters)

    metrics = json.loads((tmp_path / ".tidelake" / "metrics" / "reviews.json").read_text())
    counts = metrics["counts"]
    assert counts["redacted_email"] >= 2 * PLANTED  # in the text and in the title
    assert min(counts[f"redacted_{k}"] for k in ("phone", "card", "iban")) >= PLANTED
