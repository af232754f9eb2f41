"""Flows do not load pandas unless they use it; a python transform's pandas objects still
convert as pandas objects (``tidelake.pyarrow_pandas``). Each flow runs in ``tidelake run``:
this interpreter imported pandas long ago."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tidelake.config import load
from tidelake.lake import QueryEngine

FUNCTIONS = """
import sys
import pyarrow as pa

def probe(table):
    return table.append_column("pandas", pa.array(["pandas" in sys.modules] * table.num_rows))

def series(table):
    import pandas as pd
    return {"x": pd.Series([1.0, float("nan")] * (table.num_rows // 2))}
"""


def run(tmp_path: Path, function: str, sql: str) -> dict[str, object]:
    (tmp_path / "functions.py").write_text(textwrap.dedent(FUNCTIONS))
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"name: p\nlake: file://{tmp_path}/lake\nflows:\n  f:\n"
        "    source: {type: generator, kind: movie_ratings, limit: 10}\n"
        f"    transforms: [{{type: python, function: 'functions.py:{function}'}}]\n"
        "    sink: {type: lake, table: t}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "tidelake.cli", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return QueryEngine(load(path)).sql(sql).to_pylist()[0]  # type: ignore[no-any-return]


def test_a_flow_into_the_lake_runs_without_importing_pandas(tmp_path: Path) -> None:
    seen = run(tmp_path, "probe", "SELECT count(*) AS n, bool_or(pandas) AS pandas FROM t")
    assert seen == {"n": 10, "pandas": False}


def test_a_python_transform_hands_over_pandas_series_with_pandas_semantics(
    tmp_path: Path,
) -> None:
    seen = run(tmp_path, "series", "SELECT count(*) AS n, count(x) AS x FROM t")
    assert seen == {"n": 10, "x": 5}  # NaN is null, as pandas means it
