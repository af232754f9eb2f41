"""JSON records <-> Arrow, a whole batch at a time.

The fast path hands all values to Arrow's C++ JSON reader at once. Only when
that fails (a malformed record, a field whose type changes inside the batch)
does the slow path parse record by record, so the bad ones can be named.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence

import duckdb
import orjson
import pyarrow as pa
import pyarrow.json as pj


def decode_json(values: Sequence[bytes | None]) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Decode JSON objects; returns the table of good rows and (index, reason) of bad ones.

    Rows keep the order of ``values``; ``None`` values (tombstones) are reported as bad
    with reason ``tombstone`` so callers decide what they mean.
    """
    tombstones = [i for i, v in enumerate(values) if v is None]
    if not tombstones and values:
        try:
            table = _read(b"\n".join(values))  # type: ignore[arg-type]
            if table.num_rows == len(values):  # a value with a raw newline would split rows
                return table, []
        except pa.ArrowInvalid:
            pass
    return _decode_slow(values)


def _read(data: bytes) -> pa.Table:
    opts = pj.ReadOptions(block_size=max(len(data) + 1, 1 << 20), use_threads=False)
    return pj.read_json(io.BytesIO(data), read_options=opts)


def _decode_slow(values: Sequence[bytes | None]) -> tuple[pa.Table, list[tuple[int, str]]]:
    rows: list[dict[str, object]] = []
    bad: list[tuple[int, str]] = []
    for i, v in enumerate(values):
        if v is None:
            bad.append((i, "tombstone"))
            continue
        try:
            obj = orjson.loads(v)
        except orjson.JSONDecodeError as e:
            bad.append((i, f"invalid JSON: {e}"))
            continue
        if not isinstance(obj, dict):
            bad.append((i, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        rows.append(obj)
    if not rows:
        return pa.table({}), bad
    try:
        return pa.Table.from_pylist(rows), bad
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.Table.from_pylist(_stringify_conflicts(rows)), bad


def _stringify_conflicts(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Fields whose JSON type varies become strings; the sink decides which values still cast."""
    kinds: dict[str, set[type]] = {}
    for r in rows:
        for k, v in r.items():
            if v is not None:
                kinds.setdefault(k, set()).add(bool if isinstance(v, bool) else type(v))
    mixed = {k for k, t in kinds.items() if len(t - {int, float}) > 0 and len(t) > 1}
    if not mixed:
        return rows
    return [
        {
            k: (orjson.dumps(v).decode() if isinstance(v, dict | list) else str(v))
            if k in mixed and v is not None
            else v
            for k, v in r.items()
        }
        for r in rows
    ]


_local = threading.local()


def _duckdb() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB per thread: connecting costs more than encoding a small batch."""
    con: duckdb.DuckDBPyConnection | None = getattr(_local, "con", None)
    if con is None:
        con = _local.con = duckdb.connect()
    return con


def encode_json(table: pa.Table) -> list[bytes]:
    """One compact JSON object per row (DuckDB's ``to_json``, vectorized)."""
    if table.num_rows == 0:
        return []
    con = _duckdb()
    con.register("batch", table)
    try:
        out = con.sql("SELECT CAST(to_json(b) AS BLOB) FROM batch b").to_arrow_table()
    finally:
        con.unregister("batch")
    return out.column(0).to_pylist()  # type: ignore[no-any-return]
