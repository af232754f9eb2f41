"""The words every layer shares, on the ground floor: it imports nothing else of tidelake.

``config`` (pipeline files) and ``runtime`` (flows) both speak of connector configs,
checkpoints and provenance columns; defining them here lets each import them without
importing the other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

Checkpoint = dict[str, int]
"""Source position: position key (e.g. ``"ratings/0"`` = topic/partition) -> next offset."""

PROVENANCE = ("_topic", "_partition", "_offset")
"""Columns a topic source adds to every row so landed data is checkable by a query."""


class ConnectorConfig(BaseModel):
    """Base of every connector's config: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    type: str
