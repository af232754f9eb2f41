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
    rows: list[tuple[int, dict[str, object]]] = []
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
        rows.append((i, obj))
    if not rows:
        return pa.table({}), bad
    try:
        return _table([r for _, r in rows]), bad
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        kept, misfits = _majority_kinds(rows)
        bad.extend(misfits)
        bad.sort()
    try:
        return _table(kept), bad
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # objects whose inner fields disagree
        return _table(_nested_as_text(kept)), bad


def _table(rows: list[dict[str, object]]) -> pa.Table:
    """Columns of every field any row has (``from_pylist`` only sees the first row's)."""
    return pa.Table.from_struct_array(pa.array(rows)) if rows else pa.table({})


def _nested_as_text(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [
        {k: orjson.dumps(v).decode() if isinstance(v, dict | list) else v for k, v in r.items()}
        for r in rows
    ]


_KINDS = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}


def _kind(v: object) -> str:
    return _KINDS.get(type(v), "an array" if isinstance(v, list) else "an object")


def _majority_kinds(
    rows: list[tuple[int, dict[str, object]]],
) -> tuple[list[dict[str, object]], list[tuple[int, str]]]:
    """Give each field the JSON kind most records have; a record with another kind is bad,
    quoting its own value. Scalars in a text field are kept as their text."""
    counts: dict[str, dict[str, int]] = {}
    for _, r in rows:
        for k, v in r.items():
            if v is not None:
                kinds = counts.setdefault(k, {})
                kinds[_kind(v)] = kinds.get(_kind(v), 0) + 1
    winner = {k: max(c, key=c.__getitem__) for k, c in counts.items() if len(c) > 1}
    kept: list[dict[str, object]] = []
    bad: list[tuple[int, str]] = []
    for i, r in rows:
        problems = []
        for k, want in winner.items():
            v = r.get(k)
            if v is None or _kind(v) == want:
                continue
            if want == "a string" and not isinstance(v, dict | list):
                r[k] = orjson.dumps(v).decode() if isinstance(v, bool) else str(v)
                continue
            shown = orjson.dumps(v).decode()
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            problems.append(f"field {k!r}: {shown} is {_kind(v)}, expected {want}")
        if problems:
            bad.append((i, "; ".join(problems)))
        else:
            kept.append(r)
    return kept, bad


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
