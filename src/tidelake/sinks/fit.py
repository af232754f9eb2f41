"""Coerce a batch to a store's column types, vectorized, and set aside the rows that do not fit.

Stores with typed columns (Cassandra, MongoDB's BSON) reject a whole request for one bad value.
``fit`` casts every column in one DuckDB query (``TRY_CAST``): a row whose non-null value
does not cast, or whose key column is null, is returned apart with a reason naming the column,
the value's type and the target type, for the flow's dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from tidelake.db import ident


def fit(
    table: pa.Table, targets: Mapping[str, str], not_null: Sequence[str] = ()
) -> tuple[pa.Table, list[tuple[pa.Table, str]]]:
    """(rows cast to ``targets`` (column -> DuckDB type), [(rejected rows, reason), ...]).

    Columns missing from ``targets`` pass through unchanged; rejected rows keep their
    original values. A missing ``not_null`` column rejects every row.
    """
    if not table.num_rows:
        return table, []
    cols = table.column_names
    missing = [k for k in not_null if k not in cols]
    if missing:
        return table.slice(0, 0), [(table, f"key column {missing[0]!r} is missing from the batch")]
    checks: list[tuple[str, str, str | None]] = []
    outs: list[str] = []
    for name in cols:
        q = ident(name)
        target = targets.get(name)
        if target is None:
            outs.append(q)
            continue
        outs.append(f"TRY_CAST({q} AS {target}) AS {q}")
        checks.append((f"({q} IS NOT NULL AND TRY_CAST({q} AS {target}) IS NULL)", name, target))
    for name in not_null:
        checks.append((f"({ident(name)} IS NULL)", name, None))
    con = duckdb.connect()
    try:
        con.register("batch", table)
        flags = ", ".join(f"{expr} AS _bad{i}" for i, (expr, _, _) in enumerate(checks))
        sql = f"SELECT {', '.join(outs)}{', ' + flags if flags else ''} FROM batch"
        result = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    rejected: list[tuple[pa.Table, str]] = []
    bad_any = pa.array([False] * table.num_rows)
    for i, (_, name, target) in enumerate(checks):
        flag = pc.and_not(result.column(f"_bad{i}"), bad_any)  # first failing column names it
        if pc.any(flag).as_py():
            bad = table.filter(flag)
            if target is None:
                reason = f"key column {name!r} is null"
            else:
                reason = (
                    f"column {name!r}: a {table.schema.field(name).type} value does not fit "
                    f"the store's type {target}"
                )
            rejected.append((bad, reason))
            bad_any = pc.or_(bad_any, flag)
    good = result.select(cols).filter(pc.invert(bad_any)) if rejected else result.select(cols)
    return good, rejected


def last_per_key(table: pa.Table, key: list[str]) -> pa.Table:
    """Keep the last row of every key, in arrival order (vectorized): stores that apply a
    batch's writes concurrently or as a set would otherwise keep any of them."""
    if table.num_rows < 2:
        return table
    idx = pa.array(range(table.num_rows), pa.int64())
    last = (
        table.select(key)
        .append_column("_i", idx)
        .group_by(key, use_threads=False)
        .aggregate([("_i", "max")])
        .column("_i_max")
    )
    return table.take(pc.take(last, pc.sort_indices(last)))  # in arrival order
