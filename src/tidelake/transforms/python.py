"""``python``: a user function applied to each batch.

The function receives the batch as a ``pyarrow.Table`` and returns the new
batch: a ``pyarrow.Table`` or ``RecordBatch`` (best: stays vectorized), a
pandas DataFrame, a list of dicts or a dict of columns.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from tidelake import pyarrow_pandas
from tidelake.errors import ConfigError
from tidelake.runtime.base import ConnectorConfig, FlowContext, Transform


def load_function(spec: str, base_dir: Path) -> Callable[..., Any]:
    """``package.module:func`` (importable) or ``path/to/file.py:func`` (relative to base_dir)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(
            f"python transform: function {spec!r}: write 'package.module:func' or 'file.py:func'"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise ConfigError(
                f"python transform: {path} does not exist (paths are relative to the pipeline file)"
            )
        name = f"tidelake_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"python transform: cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise ConfigError(
                f"python transform: importing {path} failed: {type(e).__name__}: {e}"
            ) from e
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ConfigError(
                f"python transform: cannot import {target!r}: {e} "
                "(is it installed or on PYTHONPATH?)"
            ) from e
    func = getattr(module, attr, None)
    if not callable(func):
        raise ConfigError(f"python transform: {target!r} has no function {attr!r}")
    return func  # type: ignore[no-any-return]


def to_table(result: Any, spec: str) -> pa.Table:
    """Coerce what a user function returned into a table, or say what it should return."""
    pyarrow_pandas.for_pandas_objects()  # the function may hand over pandas objects
    if isinstance(result, pa.Table):
        return result
    if isinstance(result, pa.RecordBatch):
        return pa.Table.from_batches([result])
    if type(result).__module__.partition(".")[0] == "pandas" and hasattr(result, "columns"):
        return pa.Table.from_pandas(result, preserve_index=False)
    if isinstance(result, list) and all(isinstance(r, dict) for r in result):
        return pa.Table.from_pylist(result)
    if isinstance(result, dict):
        return pa.table(result)
    raise ConfigError(
        f"python transform {spec}: returned {type(result).__name__}; return a pyarrow.Table "
        "(or RecordBatch, pandas DataFrame, list of dicts, dict of columns)"
    )


class PythonTransform(Transform):
    """Call ``function(table, **args)`` on each batch; its result becomes the batch."""

    class Config(ConnectorConfig):
        type: Literal["python"]
        function: str = Field(
            description="'package.module:func' or 'path/to/file.py:func' (relative to the "
            "pipeline file); called with the batch as a pyarrow.Table"
        )
        args: dict[str, Any] = Field({}, description="keyword arguments passed to the function")

    config: Config
    func: Callable[..., Any] | None = None

    def open(self, ctx: FlowContext) -> None:
        self.func = load_function(self.config.function, ctx.pipeline.base_dir)

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.func is None:
            raise ConfigError("python transform: call open() first (the function is loaded there)")
        return to_table(self.func(table, **self.config.args), self.config.function)
