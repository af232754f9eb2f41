"""tidelake: real-time data pipelines — ingest, log, transform, land exactly once, serve."""

import os
import platform
import sys


def _load_pyarrow() -> None:
    """Arrow's memory from jemalloc rather than pyarrow's default mimalloc on x86-64 Linux:
    mimalloc kept 30-60 MB more resident in the bench's flows at the same CPU
    (bench/RESULTS.md). Arrow reads ``ARROW_DEFAULT_MEMORY_POOL`` once, when pyarrow loads;
    a value set by the user still chooses, and child processes inherit nothing from here."""
    if "pyarrow" in sys.modules or (sys.platform, platform.machine()) != ("linux", "x86_64"):
        return
    chosen = "ARROW_DEFAULT_MEMORY_POOL" in os.environ
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    try:
        import pyarrow  # noqa: F401
    finally:
        if not chosen:
            del os.environ["ARROW_DEFAULT_MEMORY_POOL"]


_load_pyarrow()

from tidelake.errors import ConfigError, ConnectorError, QueryError, TidelakeError  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ConfigError", "ConnectorError", "QueryError", "TidelakeError", "__version__"]
