"""The words every layer shares, on the ground floor: it imports nothing else of tidelake
but its errors.

``config`` (pipeline files) and ``runtime`` (flows) both speak of connector configs,
checkpoints, provenance columns and column type names; defining them here lets each import
them without importing the other.
"""

from __future__ import annotations

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from tidelake.errors import ConfigError

Checkpoint = dict[str, int]
"""Source position: position key (e.g. ``"ratings/0"`` = topic/partition) -> next offset."""

PROVENANCE = ("_topic", "_partition", "_offset")
"""Columns a topic source adds to every row so landed data is checkable by a query."""


class ConnectorConfig(BaseModel):
    """Base of every connector's config: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    type: str


_ALIASES = {"int": "int64", "float": "double", "str": "string", "boolean": "bool"}


def pa_type(name: str) -> pa.DataType:
    """``int``, ``float``, ``string``, ``bool``, ``timestamp`` (UTC), ``date32``, or any
    pyarrow type alias (``int32``, ``timestamp[ms]``, ...)."""
    if name == "timestamp":
        return pa.timestamp("us", tz="UTC")
    try:
        return pa.type_for_alias(_ALIASES.get(name, name))
    except ValueError:
        raise ConfigError(
            f"unknown column type {name!r} (use int, float, string, bool, timestamp, date32 "
            "or a pyarrow type name such as int32 or timestamp[ms])"
        ) from None
