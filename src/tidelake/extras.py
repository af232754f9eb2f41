"""Optional dependencies: which ``tidelake[EXTRA]`` brings which importable module.

The core install runs pipelines on the embedded log and SQLite; everything else is an extra
declared in pyproject.toml. ``MODULES`` maps the top-level modules tidelake imports to the
extra that installs them, so a missing one turns into "pip install 'tidelake[X]'" instead of
a bare ImportError. A new extra is one entry in pyproject.toml plus its modules here.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from tidelake.errors import ConfigError

MODULES: dict[str, str] = {
    "confluent_kafka": "kafka",
    "psycopg": "postgres",
    "pymysql": "mysql",
    "pymysqlreplication": "mysql",
    "pyiceberg": "lake",
    "sqlalchemy": "lake",
    "fastapi": "serve",
    "fastapi_offline": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "streamlit": "dashboard",
    "pandas": "dashboard",
    "pyspark": "spark",
    "cassandra": "cassandra",
    "pymongo": "mongodb",
    "parsel": "crawl",
}


def _problem(needed_by: str, extra: str, module: str, hint: str = "") -> ConfigError:
    return ConfigError(
        f"{needed_by} needs the {extra!r} extra (module {module!r} is not installed): "
        f"pip install 'tidelake[{extra}]'{hint}"
    )


def missing_extra(
    error: ImportError, needed_by: str = "this feature", extra: str | None = None
) -> ConfigError | None:
    """The ConfigError naming the extra to install, if ``error`` is a missing optional module.

    ``extra`` is the one the caller knows it needs; otherwise ``MODULES`` tells.
    """
    name = (error.name or "").partition(".")[0]
    if not isinstance(error, ModuleNotFoundError) or name not in MODULES:
        return None
    return _problem(needed_by, extra or MODULES[name], name)


def require(extra: str, needed_by: str, hint: str = "") -> None:
    """Fail now, naming the pip command, if a module of ``extra`` is not installed.

    For code that runs the extra's modules in a child process, where an ImportError
    would not reach the user.
    """
    for name in (m for m, e in MODULES.items() if e == extra):
        if importlib.util.find_spec(name) is None:
            raise _problem(needed_by, extra, name, hint)


def load(module: str, needed_by: str) -> ModuleType:
    """``import module``; a missing optional dependency becomes the ConfigError naming its extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        problem = missing_extra(e, needed_by)
        if problem is None:
            raise
        raise problem from e
