from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pytest

from tidelake.config import Pipeline
from tidelake.errors import ConfigError
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.transforms.python import PythonTransform

USER_CODE = """
import pyarrow.compute as pc

def double(table, factor=2):
    return table.set_column(0, "x", pc.multiply(table.column("x"), factor))

def rows(table):
    return [{"n": r["x"] + 1} for r in table.to_pylist()]

def wrong(table):
    return 42
"""


def transform(base: Path, function: str, **cfg: object) -> PythonTransform:
    pipeline = Pipeline(name="t", flows={}, base_dir=base)
    t = PythonTransform(
        PythonTransform.Config.model_validate({"type": "python", "function": function, **cfg})
    )
    t.open(FlowContext("f", pipeline, FlowMetrics("f"), broker_factory=lambda: None))  # type: ignore[arg-type,return-value]
    return t


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    (tmp_path / "udf").mkdir()
    (tmp_path / "udf" / "funcs.py").write_text(USER_CODE)
    return tmp_path


def test_file_function_relative_to_pipeline_with_args(code_dir: Path) -> None:
    t = transform(code_dir, "udf/funcs.py:double", args={"factor": 3})
    assert t(pa.table({"x": [1, 2]})).column("x").to_pylist() == [3, 6]


def test_module_function_and_pylist_result(code_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(code_dir / "udf"))
    t = transform(code_dir, "funcs:rows")
    assert t(pa.table({"x": [1, 2]})).to_pylist() == [{"n": 2}, {"n": 3}]
    sys.modules.pop("funcs", None)


def test_clear_errors(code_dir: Path) -> None:
    with pytest.raises(ConfigError, match="returned int; return a pyarrow.Table"):
        transform(code_dir, "udf/funcs.py:wrong")(pa.table({"x": [1]}))
    with pytest.raises(ConfigError, match="does not exist"):
        transform(code_dir, "udf/nope.py:f")
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        transform(code_dir, "udf/funcs.py:nope")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        transform(code_dir, "no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="module:func"):
        transform(code_dir, "just_a_name")
