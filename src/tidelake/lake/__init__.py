"""The lake: Iceberg tables of a pipeline, their upkeep, and the one query layer over them.

Public surface (what the CLI, the API and the dashboard call):

- ``QueryEngine(pipeline)`` — DuckDB over lake + database tables (``sql``, ``tables``, ...);
- ``tables(pipeline)`` / ``describe(pipeline, name)`` — the lake catalog;
- ``compact(pipeline, name)`` / ``expire(pipeline, name)`` — maintenance on demand.
"""

from __future__ import annotations

from datetime import timedelta

from tidelake.config import Pipeline
from tidelake.lake import maintenance
from tidelake.lake.catalog import load_table, open_catalog
from tidelake.lake.maintenance import CompactionResult, ExpiryResult, MaintenancePolicy
from tidelake.lake.query import QueryEngine, TableDetail, TableInfo, describe, tables


def compact(
    pipeline: Pipeline, name: str, target_file_size: int = 128 * 2**20, min_files: int = 2
) -> CompactionResult:
    """Rewrite the small files of lake table ``name`` (``tidelake lake compact NAME``)."""
    return maintenance.compact(load_table(pipeline, name), target_file_size, min_files)


def expire(
    pipeline: Pipeline, name: str, keep: int = 100, max_age: timedelta = timedelta(days=7)
) -> ExpiryResult:
    """Expire old snapshots of ``name`` and delete their files (``tidelake lake expire``)."""
    return maintenance.expire(load_table(pipeline, name), keep, max_age)


__all__ = [
    "CompactionResult",
    "ExpiryResult",
    "MaintenancePolicy",
    "QueryEngine",
    "TableDetail",
    "TableInfo",
    "compact",
    "describe",
    "expire",
    "open_catalog",
    "tables",
]
