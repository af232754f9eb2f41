"""Every use of pyiceberg's private API, in one place.

pyiceberg offers no public way to do these things, so tidelake reaches into its
internals here and nowhere else; pyproject.toml bounds pyiceberg below the next minor
version, and raising that bound means re-checking this module (tests/unit/test_lake_*).

- ``Transaction``: staged-metadata memoization (private ``_table``, ``_updates``).
- ``data_files``: Parquet data files from an Arrow table (``_dataframe_to_data_files``).
- ``append_files``: stage an append of data files already written, the way
  ``Transaction.append`` would (``_append_snapshot_producer``: fast or merge append).
- ``metadata_locations``: every table's metadata pointer in one query of the SQL catalog's
  own table (``IcebergTables``, ``engine``, ``_iceberg_type_filter``).
"""

from __future__ import annotations

import uuid

import pyarrow as pa
from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.table import Transaction as _Transaction
from pyiceberg.table.metadata import TableMetadata
from sqlalchemy import select


class Transaction(_Transaction):
    """pyiceberg's ``Transaction`` with its ``table_metadata`` computed once per staged change.

    pyiceberg 0.12 rebuilds and deep-copies the whole table metadata on every access
    (about twenty per append), so a commit cost grew with the snapshot history:
    ~350 ms per append at 100 snapshots. Metadata models are frozen, so sharing
    one copy until the next staged update is safe.
    """

    _memo: tuple[object, object, TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        memo = self._memo
        if memo is None or memo[0] is not self._table.metadata or memo[1] is not self._updates:
            memo = (self._table.metadata, self._updates, super().table_metadata)
            self._memo = memo
        return memo[2]


def data_files(meta: TableMetadata, data: pa.Table, io: FileIO) -> list[DataFile]:
    """Write ``data`` as Parquet data files of the table described by ``meta`` (not committed)."""
    return list(_dataframe_to_data_files(meta, data, io, uuid.uuid4()))


def append_files(tx: _Transaction, files: list[DataFile], properties: dict[str, str]) -> None:
    """Stage the append of ``files`` in ``tx``: ``Transaction.append`` without writing them."""
    with tx._append_snapshot_producer(properties) as append:
        for f in files:
            append.append_data_file(f)


def metadata_locations(catalog: SqlCatalog, namespace: str) -> dict[str, str]:
    """Every table of ``namespace`` -> its current metadata file, in one catalog query."""
    stmt = select(IcebergTables.table_name, IcebergTables.metadata_location).where(
        IcebergTables.catalog_name == catalog.name,
        IcebergTables.table_namespace == namespace,
    )
    type_filter = getattr(catalog, "_iceberg_type_filter", None)
    kind = type_filter() if type_filter is not None else None  # skips views
    if kind is not None:
        stmt = stmt.where(kind)
    with catalog.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return {str(name): str(location) for name, location in rows if location}
