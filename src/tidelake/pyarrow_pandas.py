"""Keep pandas out of flow processes that never use it (42 MB of resident memory each).

pyarrow asks whether pandas is installed the first time it converts a Python list
(``pa.array(values)``), and asking imports it. :func:`skip_probe` lets that first, silent
question find no pandas; pyarrow then converts lists without it, and imports pandas itself
the first time pandas is really needed (``to_pandas``, ``from_pandas``).
:func:`for_pandas_objects` is that first time for code that may hand pyarrow pandas objects
some other way (``pa.table`` of a dict of Series would otherwise be read as plain sequences:
NaN stays NaN instead of null).
"""

from __future__ import annotations

import importlib.abc
import sys
import threading

import pyarrow as pa

_probed = False
_healed = False


class _NoPandas(importlib.abc.MetaPathFinder):
    """Refuses ``import pandas`` on one thread, for the length of pyarrow's probe."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == "pandas" and threading.get_ident() == self.thread:
            raise ImportError("pandas is imported when it is used")


def skip_probe() -> None:
    """Answer pyarrow's "is pandas installed?" with no, unless pandas is already imported."""
    global _probed
    if _probed or "pandas" in sys.modules:
        return
    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])  # the conversion that asks
    finally:
        sys.meta_path.remove(finder)
        _probed = True


def for_pandas_objects() -> None:
    """Make pyarrow recognize pandas objects again once pandas is imported (after
    :func:`skip_probe`)."""
    global _healed
    if _healed or not _probed or "pandas" not in sys.modules:
        return
    pa.Table.from_pandas(sys.modules["pandas"].DataFrame())  # a real use: pyarrow takes it
    _healed = True
