"""Flows do not load pandas unless they use it (``tidelake.pyarrow_pandas``) and allocate
Arrow memory with jemalloc (``tidelake/__init__``); a python transform's pandas objects still
convert as pandas objects. Each flow runs in ``tidelake run``: this interpreter imported
pandas long ago."""

from __future__ import annotations

import os
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
    table = table.append_column("pandas", pa.array(["pandas" in sys.modules] * table.num_rows))
    pool = pa.default_memory_pool().backend_name
    return table.append_column("pool", pa.array([pool] * table.num_rows))

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
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run(
        [sys.executable, "-m", "tidelake.cli", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,  # as a shell starts it: tidelake itself chooses the pool
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return QueryEngine(load(path)).sql(sql).to_pylist()[0]  # type: ignore[no-any-return]


def test_a_flow_into_the_lake_runs_without_pandas_and_on_jemalloc(tmp_path: Path) -> None:
    sql = "SELECT count(*) AS n, bool_or(pandas) AS pandas, min(pool) AS pool FROM t"
    seen = run(tmp_path, "probe", sql)
    assert seen == {"n": 10, "pandas": False, "pool": "jemalloc"}


def test_a_python_transform_hands_over_pandas_series_with_pandas_semantics(
    tmp_path: Path,
) -> None:
    seen = run(tmp_path, "series", "SELECT count(*) AS n, count(x) AS x FROM t")
    assert seen == {"n": 10, "x": 5}  # NaN is null, as pandas means it
