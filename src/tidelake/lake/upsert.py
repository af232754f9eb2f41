"""Current-state writes (``mode: upsert``): a batch of changes applied by key, copy-on-write.

A batch is reduced to **the last row per key** (batch order: the last occurrence
wins). Keys whose last row matches ``delete_when`` are deleted; the others are
replaced by that row. Inside the caller's Iceberg transaction — so in ONE
catalog commit together with schema changes and the flow's checkpoint — this
stages:

1. a copy-on-write delete of every stored row whose key is in the batch
   (pyiceberg's ``Transaction.delete``: data files holding a matched key are
   rewritten without those rows, files holding only matched keys are dropped);
2. an append of the surviving last rows (always, even when empty, so the
   transaction's last snapshot is the one carrying the checkpoint).

Idempotence: the result only depends on the table before the write and on the
last row per key of the batch, so re-applying a batch (after a crash, or a
re-read that overlaps rows already applied) converges to the same state.

Matching: a single-column key is an ``In`` filter. A composite key is matched
with ``In`` per column, a superset of the batch's keys; the stored rows in that
superset whose full key is *not* in the batch are read in the same
transaction and appended back, so the result is exact without an ``Or`` of
thousands of ``And``s.

Cost: copy-on-write rewrites every data file that holds one of the batch's keys,
so a batch costs in proportion to the files it touches, not to its own size.
Keys that arrive in order (sequences, time-ordered ids) touch few files; keys
spread over the whole table rewrite most of it on every commit — keep batches
large (``batch.size``/``max_latency``) for such tables. Nothing here creates
delete files, so readers (DuckDB over the Parquet files) need no merge-on-read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import reduce

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import And, BooleanExpression, In
from pyiceberg.io import FileIO
from pyiceberg.table import DataScan, Transaction

from tidelake.errors import ConfigError
from tidelake.lake import schema

_HIT = "__tidelake_hit"
_ROW = "__tidelake_row"

# pyiceberg warns when a delete matches no stored row: for an upsert that is every batch
# of new keys, not a problem worth a warning.
warnings.filterwarnings("ignore", message="Delete operation did not match any records")


@dataclass(frozen=True)
class Changes:
    """A batch reduced to its last row per key."""

    upserts: pa.Table
    """Rows to store (last row of their key, not a delete), in batch order."""
    deletes: pa.Table
    """Last rows of keys to delete (all batch columns; only the key is used)."""
    null_keys: pa.Table
    """Rows with a null key column: they cannot be matched and are not applied."""


def reduce_changes(rows: pa.Table, key: list[str], delete_when: str | None) -> Changes:
    """Last row per key, split into upserts and deletes (vectorized: one group-by)."""
    missing = [k for k in key if k not in rows.column_names]
    if missing and rows.num_rows:
        raise ConfigError(
            f"upsert key column(s) {', '.join(missing)} not in the batch "
            f"(columns: {', '.join(rows.column_names)}); fix 'key' in the lake sink"
        )
    if not rows.num_rows:
        return Changes(rows, rows, rows)
    valid = reduce(pc.and_, [pc.is_valid(rows.column(k)) for k in key])
    null_keys = rows.filter(pc.invert(valid))
    rows = rows.filter(valid) if null_keys.num_rows else rows
    numbered = rows.select(key).append_column(_ROW, pa.array(range(rows.num_rows), pa.int64()))
    last = numbered.group_by(key, use_threads=False).aggregate([(_ROW, "max")])
    picked = last.column(f"{_ROW}_max")
    latest = rows.take(picked.take(pc.sort_indices(picked)))
    if delete_when is None:
        return Changes(latest, latest.slice(0, 0), null_keys)
    doomed = delete_mask(latest, delete_when)
    return Changes(latest.filter(pc.invert(doomed)), latest.filter(doomed), null_keys)


def delete_mask(rows: pa.Table, predicate: str) -> pa.ChunkedArray:
    """``predicate`` (DuckDB SQL over the batch's columns) per row; NULL counts as false."""
    con = duckdb.connect()
    try:
        con.register("batch", rows)
        try:
            mask = con.sql(f"SELECT coalesce(({predicate}), false) AS d FROM batch")
            return mask.to_arrow_table().column("d")
        except duckdb.Error as e:
            raise ConfigError(
                f"delete_when {predicate!r}: {str(e).splitlines()[0]} "
                f"(columns: {', '.join(rows.column_names)})"
            ) from None
    finally:
        con.close()


def match_filter(keys: pa.Table) -> BooleanExpression:
    """Rows whose key is in ``keys`` (exact for one column, a superset for several)."""
    ins: list[BooleanExpression] = [
        In(term=name, literals=keys.column(name).unique().to_pylist()) for name in keys.column_names
    ]
    return ins[0] if len(ins) == 1 else And(*ins)


def not_in(rows: pa.Table, keys: pa.Table) -> pa.Table:
    """The rows of ``rows`` whose key (the columns of ``keys``) is not in ``keys``."""
    if not rows.num_rows:
        return rows
    hits = _marked(keys)
    joined = rows.join(hits, keys=keys.column_names, join_type="left outer", use_threads=False)
    return joined.filter(pc.is_null(joined.column(_HIT))).drop_columns([_HIT])


def _marked(keys: pa.Table) -> pa.Table:
    unique = keys.group_by(keys.column_names, use_threads=False).aggregate([])
    return unique.append_column(_HIT, pa.array([True] * unique.num_rows, pa.bool_()))


def stage(
    tx: Transaction,
    io: FileIO,
    key: list[str],
    upserts: pa.Table,
    deletes: pa.Table,
    properties: dict[str, str],
) -> pa.Table:
    """Stage the delete-by-key and the append in ``tx``; return the rows appended.

    ``upserts`` and ``deletes`` must already fit the table schema of ``tx`` (the key
    columns of ``deletes`` are what is used). Every snapshot staged carries
    ``properties``; the append is staged last and always, so the transaction's
    final snapshot carries them.
    """
    keys = pa.concat_tables([upserts.select(key), deletes.select(key)])
    rows = upserts
    if keys.num_rows and tx.table_metadata.current_snapshot() is not None:
        where = match_filter(keys)
        if len(key) > 1:
            scan = DataScan(table_metadata=tx.table_metadata, io=io, row_filter=where)
            kept = not_in(scan.to_arrow(), keys)
            if kept.num_rows:
                refit = schema.conform(kept, tx.table_metadata.schema()).table
                rows = pa.concat_tables([refit, upserts])
        tx.delete(where, snapshot_properties=properties)
    tx.append(rows, snapshot_properties=properties)
    return rows


__all__ = ["Changes", "delete_mask", "match_filter", "not_in", "reduce_changes", "stage"]
