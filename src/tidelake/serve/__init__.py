"""Serving a pipeline: the HTTP API (``create_app``) and the server that runs it (``serve``).

Exports load lazily, so importing ``tidelake.serve.dashboard`` does not pull in FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidelake.serve.api import create_app
    from tidelake.serve.engine import Limits
    from tidelake.serve.server import serve

_EXPORTS = {
    "create_app": "tidelake.serve.api",
    "Limits": "tidelake.serve.engine",
    "serve": "tidelake.serve.server",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tidelake.serve' has no attribute {name!r}")


__all__ = ["Limits", "create_app", "serve"]
