"""SQL identifiers: the one place tidelake turns a name into SQL text.

``quote`` doubles embedded double quotes, the rule DuckDB, SQLite and PostgreSQL share, so
any name a schema holds is safe. ``plain`` also refuses names other than letters, digits and
underscores: for names from pipeline files that become objects of the operational database.
"""

from __future__ import annotations

import re

from tidelake.errors import ConfigError

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def plain(name: str) -> str:
    """``name`` quoted, if it is letters, digits and underscores; a ConfigError otherwise."""
    if not _PLAIN.match(name):
        raise ConfigError(f"{name!r} is not a valid table or column name (use letters, digits, _)")
    return quote(name)
