"""JSON records <-> Arrow, a whole batch at a time.

Decoding never hands Arrow's JSON reader a batch it could crash on or silently
misread. A few vectorized checks over the whole batch (``_clean``) come first:
every value is valid UTF-8, one object on one line, at most ``MAX_RECORD_BYTES``,
and with few enough brackets that its depth cannot pass ``MAX_DEPTH``. A clean batch goes
to Arrow's C++ reader at once (the fast path). Arrow reads ``NaN`` and ``Infinity`` as
floats, and integers beyond int64 (or beyond 2**53 in a field of floats) as rounded doubles:
each leaves a
float that is not finite or is at least 2**53 in magnitude, and only a batch holding such
a float is searched for those tokens (``_MISREAD``, string contents aside; the search
costs about as much as the read). Otherwise, or when Arrow fails (``1e400``, a field whose
type changes inside the
batch), records are parsed one by one with orjson, so each bad one is named
with its reason and the rest still decode; a field whose JSON kind varies (nested fields
too) takes the kind most records have, and the others are bad.

pyarrow 26.0.1, ``pyarrow.json.read_json``: input whose first value is ``null``
(also after whitespace: ``b" null"``, ``b"\\nnull"``) crashes the process with
SIGSEGV instead of raising ``ArrowInvalid``; arrays nested ~100,000 deep crash
the same way (stack overflow); ``NaN``/``Infinity`` are read as floats, a BOM is
skipped, integers beyond int64 become doubles, invalid UTF-8 inside a string is
returned as an invalid ``string`` column (``UnicodeDecodeError`` later), and a
``null`` line after the first becomes an all-null row. Reproduce with
``pyarrow.json.read_json(io.BytesIO(b"null"))``.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from tidelake.formats.times import parse_times
from tidelake.identifiers import quote

MAX_DEPTH = 64
"""Deepest nesting of objects and arrays a record may have."""
MAX_RECORD_BYTES = 1 << 20
"""Largest record accepted (Kafka's default ``max.message.bytes`` is about the same)."""

_SHALLOW_BYTES = 4096
"""Records this short nest at most ~2,000 deep: far below what overflows Arrow's parser."""
_MISREAD = r"[:,\[]\s*-?(?:NaN|Inf|[0-9]{16}|[0-9]+(?:\.[0-9]*)?[eE][+-]?[0-9]{3})"
"""A token Arrow would misread as a value: ``NaN``, ``Inf``/``Infinity``, integers of 16+
digits (beyond int64, or beyond 2**53 where a field of floats rounds them), 3-digit
exponents; right after the ``:``, ``[`` or ``,`` that starts every value outside a string.
Inside strings these are text (uuids and hex digests hold ``e123`` everywhere); a string
that happens to hold such a delimiter and token only costs the batch the slow path."""
_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def decode_json(
    values: Sequence[bytes | None], schema: pa.Schema | None = None
) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Decode JSON objects; returns the table of good rows and (index, reason) of bad ones.

    Rows keep the order of ``values``; ``None`` values (tombstones) are reported as bad
    with reason ``tombstone`` so callers decide what they mean. A record is bad unless it
    is one JSON object of valid UTF-8 with finite numbers, integers within int64, at most
    ``MAX_DEPTH`` levels and ``MAX_RECORD_BYTES`` bytes; no input crashes the process.
    Top-level fields whose text is ISO 8601 date-times become timestamps (``formats.times``).

    With ``schema`` (an earlier batch's, cut down by ``project_schema``) only its fields are
    converted, nested ones too; the rest of each record is skipped, and a field it lacks is
    null. A batch that does not fit it (a field of another type) is decoded as without.
    """
    if schema is not None:
        table = _fast(values, schema)
        if table is not None:
            return parse_times(table), []
    table = _fast(values)
    if table is not None:
        return parse_times(table), []
    table, bad = _decode_slow(values)
    return parse_times(table), bad


def split_lines(data: bytes) -> tuple[list[bytes], list[int]]:
    """The non-blank lines of JSON Lines ``data`` (without ``\r``) and their 1-based numbers."""
    raw = data.split(b"\n")
    numbers = [n for n, line in enumerate(raw, start=1) if line.strip()]
    return [raw[n - 1].rstrip(b"\r") for n in numbers], numbers


def invalid_records(values: Sequence[bytes]) -> list[tuple[int, str]]:
    """(index, reason) of the values ``decode_json`` would refuse as records (types aside:
    fields whose kind varies between records are the flows' concern, not the log's)."""
    if _fast(values) is not None:
        return []
    return _parse_all(values)[1]


def project_schema(schema: pa.Schema, paths: Sequence[str]) -> pa.Schema | None:
    """``schema`` cut down to the fields at ``paths``: ``name``, or ``name.child...`` into
    structs, unquoted as DuckDB's plans list them. None when a path is not in ``schema`` or
    names two fields (a top-level ``a.b`` beside struct ``a`` with child ``b``)."""
    need: dict[str, Any] = {}  # name -> None (the whole field) or the children needed
    for path in paths:
        found = _resolve(list(schema), path)
        if len(found) != 1:
            return None
        level: dict[str, Any] | None = need
        for i, name in enumerate(found[0]):
            if level is None:
                break  # an ancestor is needed whole
            if i == len(found[0]) - 1:
                level[name] = None
            else:
                level = level.setdefault(name, {})

    def cut(fields: Sequence[pa.Field], want: dict[str, Any]) -> list[pa.Field]:
        out = []
        for f in fields:
            if f.name in want:
                sub = want[f.name]
                out.append(f if sub is None else f.with_type(pa.struct(cut(list(f.type), sub))))
        return out

    return pa.schema(cut(list(schema), need))


def _resolve(fields: Sequence[pa.Field], path: str) -> list[list[str]]:
    """Every way ``path`` names a field among ``fields`` (and their struct children)."""
    out = []
    for f in fields:
        if path == f.name:
            out.append([f.name])
        elif path.startswith(f.name + ".") and pa.types.is_struct(f.type):
            rest = path[len(f.name) + 1 :]
            out += [[f.name, *names] for names in _resolve(list(f.type), rest)]
    return out


def _fast(values: Sequence[bytes | None], schema: pa.Schema | None = None) -> pa.Table | None:
    """The whole batch through Arrow's reader, or None when the batch needs the slow path."""
    data = b"\n".join(values) if values and None not in values else b""  # type: ignore[arg-type]
    if data and _clean(values, data):
        try:
            table = _read(data, schema)
            if (
                table.num_rows == len(values)
                and _depth_of(table.schema) <= MAX_DEPTH
                and not (_suspect(table) and _misread(data))
            ):
                return table
        except pa.ArrowInvalid:
            pass
    return None


def _clean(values: Sequence[bytes | None], joined: bytes) -> bool:
    """True when Arrow's reader can take the batch safely: vectorized checks, no row loop."""
    if joined.count(b"\n") != len(values) - 1:  # a value with a raw newline would split rows
        return False
    try:
        data = pa.array(values, pa.binary())
        data.cast(pa.string())  # validates UTF-8
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    lengths = pc.binary_length(data)
    if pc.max(lengths).as_py() > MAX_RECORD_BYTES:
        return False
    long = data.filter(pc.greater(lengths, _SHALLOW_BYTES))
    if (
        len(long)
        and pc.max(pc.add(pc.count_substring(long, "["), pc.count_substring(long, "{"))).as_py()
        > MAX_DEPTH
    ):
        return False  # deep enough that Arrow's recursive parser could overflow the stack
    return bool(
        pc.all(pc.starts_with(data, "{")).as_py() and pc.all(pc.ends_with(data, "}")).as_py()
    )


def _suspect(table: pa.Table) -> bool:
    """A float anywhere in ``table`` (nested too) that is not finite or is at least 2**53 in
    magnitude: what a misread token leaves (``1e400`` makes Arrow fail instead)."""
    arrays = [chunk for column in table.columns for chunk in column.chunks]
    while arrays:
        a = arrays.pop()
        if pa.types.is_struct(a.type):
            arrays += a.flatten()
        elif pa.types.is_list(a.type) or pa.types.is_large_list(a.type):
            arrays.append(a.flatten())
        elif pa.types.is_floating(a.type) and a.null_count < len(a):
            finite = pc.all(pc.is_finite(a)).as_py()
            if not finite or pc.max(pc.abs(a)).as_py() >= 2**53:
                return True
    return False


def _misread(joined: bytes) -> bool:
    """Whether the batch's text holds a value Arrow reads wrongly (``_MISREAD``)."""
    whole = pa.array([joined], pa.large_binary())
    return bool(pc.match_substring_regex(whole, _MISREAD)[0].as_py())


def _depth_of(schema: pa.Schema) -> int:
    def depth(t: pa.DataType) -> int:
        return 1 + max((depth(t.field(i).type) for i in range(t.num_fields)), default=0)

    return max((depth(f.type) for f in schema), default=0) + 1


def _read(data: bytes, schema: pa.Schema | None = None) -> pa.Table:
    opts = pj.ReadOptions(block_size=max(len(data) + 1, 1 << 20), use_threads=False)
    if schema is None:
        return pj.read_json(io.BytesIO(data), read_options=opts)
    parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return pj.read_json(io.BytesIO(data), read_options=opts, parse_options=parse)


def parse_record(value: bytes) -> dict[str, object]:
    """One record as a dict, or ``ValueError`` saying why it is refused (see ``decode_json``)."""
    if len(value) > MAX_RECORD_BYTES:
        raise ValueError(f"record larger than {MAX_RECORD_BYTES} bytes (send smaller records)")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {kind(obj)}")
    if value.count(b"[") + value.count(b"{") > MAX_DEPTH and _depth(obj) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    check_integers(value)
    return obj


def check_integers(value: bytes) -> None:
    """``ValueError`` when JSON text ``value`` holds an integer beyond int64.

    orjson reads such integers as floats (or as unsigned up to 2**64), silently."""
    if _LONG_NUMBER.search(value):
        json.loads(value, parse_int=_int64)


def _int64(text: str) -> int:
    number = int(text)
    if not -(2**63) <= number < 2**63:
        raise ValueError(f"integer {text[:30]} does not fit in 64 bits (send it as a string)")
    return number


def _depth(value: object) -> int:
    depth = 0
    level: list[Any] = [value]
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            return depth
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
    return depth


def kind(value: object) -> str:
    """What a JSON value is, for error messages ("an array", "null", ...)."""
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _parse_all(
    values: Sequence[bytes | None],
) -> tuple[list[tuple[int, dict[str, object]]], list[tuple[int, str]]]:
    rows: list[tuple[int, dict[str, object]]] = []
    bad: list[tuple[int, str]] = []
    for i, v in enumerate(values):
        if v is None:
            bad.append((i, "tombstone"))
            continue
        try:
            rows.append((i, parse_record(v)))
        except ValueError as e:
            bad.append((i, str(e)))
    return rows, bad


def _decode_slow(values: Sequence[bytes | None]) -> tuple[pa.Table, list[tuple[int, str]]]:
    rows, bad = _parse_all(values)
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


def _values(
    obj: dict[str, object] | list[object], prefix: str = ""
) -> Iterator[tuple[str, dict[str, object] | list[object], Any, object]]:
    """Every value inside a record, nested too: (path, container, key, value); a list's
    items share the path ``<list>[]``."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for key, value in items:
        path = f"{prefix}[]" if isinstance(key, int) else f"{prefix}.{key}" if prefix else key
        yield path, obj, key, value
        if isinstance(value, dict | list):
            yield from _values(value, path)


def _majority_kinds(
    rows: list[tuple[int, dict[str, object]]],
) -> tuple[list[dict[str, object]], list[tuple[int, str]]]:
    """Give each field, nested fields too, the JSON kind most records have; a record with
    another kind is bad, quoting its own value. Scalars in a text field are kept as text."""
    counts: dict[str, dict[str, int]] = {}
    floats = set()  # fields holding a float: an integer beyond 2**53 has no exact value there
    for _, r in rows:
        for path, _, _, v in _values(r):
            if v is not None:
                kinds = counts.setdefault(path, {})
                kinds[kind(v)] = kinds.get(kind(v), 0) + 1
                if isinstance(v, float):
                    floats.add(path)
    winner = {k: max(c, key=c.__getitem__) for k, c in counts.items() if len(c) > 1}
    kept: list[dict[str, object]] = []
    bad: list[tuple[int, str]] = []
    for i, r in rows:
        problems = []
        for path, container, key, v in list(_values(r)):
            if path in floats and type(v) is int and abs(v) > 2**53:
                problems.append(
                    f"field {path!r}: {v} has no exact value among the floats of this field "
                    "(send it as a string)"
                )
            want = winner.get(path)
            if want is None or v is None or kind(v) == want:
                continue
            if want == "a string" and not isinstance(v, dict | list):
                container[key] = orjson.dumps(v).decode() if isinstance(v, bool) else str(v)
                continue
            shown = orjson.dumps(v).decode()
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            problems.append(f"field {path!r}: {shown} is {kind(v)}, expected {want}")
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


def select(table: pa.Table, sql: str) -> pa.Table:
    """Run ``sql`` over ``table`` registered as ``batch`` (on this thread's DuckDB)."""
    con = _duckdb()
    con.register("batch", table)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.unregister("batch")


def json_text(table: pa.Table, column: str) -> str:
    """DuckDB SQL giving ``column`` of ``table`` as JSON text: a string column is taken as JSON
    already, a missing or NULL-typed one is NULL, any other goes through ``to_json``."""
    if column not in table.column_names or pa.types.is_null(table.schema.field(column).type):
        return "CAST(NULL AS VARCHAR)"
    if pa.types.is_string(table.schema.field(column).type) or pa.types.is_large_string(
        table.schema.field(column).type
    ):
        return quote(column)
    return f"CAST(to_json({quote(column)}) AS VARCHAR)"


def encode_json(table: pa.Table) -> list[bytes]:
    """One compact JSON object per row (DuckDB's ``to_json``, vectorized)."""
    if table.num_rows == 0:
        return []
    out = select(table, "SELECT CAST(to_json(b) AS BLOB) FROM batch b")
    return out.column(0).to_pylist()  # type: ignore[no-any-return]


def nested_to_json(table: pa.Table) -> pa.Table:
    """Struct/list/map columns become JSON text (vectorized in DuckDB)."""
    nested = [f.name for f in table.schema if pa.types.is_nested(f.type)]
    if not nested:
        return table
    exprs = ", ".join(f"{json_text(table, c)} AS {quote(c)}" for c in nested)
    js = select(table.select(nested), f"SELECT {exprs} FROM batch")
    for c in nested:
        table = table.set_column(table.schema.get_field_index(c), c, js.column(c))
    return table
