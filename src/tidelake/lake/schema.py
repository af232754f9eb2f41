"""Schema on write — the crawler's job, done at commit time.

Policy (explicit, in this order):

1. **Infer**: a batch's Arrow types are normalized to what Iceberg stores
   (``large_string`` -> ``string``, small ints -> ``int``, timestamps -> microseconds,
   tz-aware -> ``timestamptz`` in UTC, dictionaries -> their values). Columns
   holding only nulls (Arrow ``null`` type) carry no type and are skipped.
2. **Evolve**: columns the table lacks are added (optional); a column whose
   batch type is a legal Iceberg promotion of the table's (``int`` -> ``long``,
   ``float`` -> ``double``, wider decimal) widens the table. Nested structs
   gain new fields the same way.
3. **Cast**: everything else is cast to the table's type, value by value and
   safely (no overflow, no truncation, strings must parse). Rows whose value
   does not fit are *rejected with a reason* — the caller dead-letters them —
   and the rest of the batch lands. Columns the batch lacks are written as null.

Casting is vectorized: one ``pyarrow.compute.cast`` per column; only when it
fails is the column bisected to find the offending rows (cost grows with the
number of bad rows, not with the batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.schema import Schema

from tidelake.runtime.dead_letters import quoted

_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


def normalize_type(t: pa.DataType) -> pa.DataType | None:
    """The Arrow type Iceberg stores for ``t``; None for the ``null`` type (no information)."""
    if pa.types.is_null(t):
        return None
    if pa.types.is_dictionary(t):
        return normalize_type(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if t in (pa.int8(), pa.int16(), pa.uint8(), pa.uint16()):
        return pa.int32()
    if t in (pa.uint32(), pa.uint64()):
        return pa.int64()
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_time(t):
        return pa.time64("us")
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz="UTC" if t.tz else None)
    if pa.types.is_duration(t) or pa.types.is_interval(t):
        return pa.int64()
    if pa.types.is_decimal(t):
        return pa.decimal128(min(t.precision, 38), t.scale)
    if pa.types.is_struct(t):
        fields = [
            pa.field(f.name, normalize_type(f.type) or pa.string())
            for f in (t.field(i) for i in range(t.num_fields))
        ]
        return pa.struct(fields) if fields else None
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(normalize_type(t.value_type) or pa.string())
    if pa.types.is_map(t):
        key = normalize_type(t.key_type) or pa.string()
        return pa.map_(key, normalize_type(t.item_type) or pa.string())
    return t


def normalize_schema(schema: pa.Schema) -> pa.Schema:
    """Normalized types, null-only columns left out; every column optional."""
    fields = []
    for f in schema:
        t = normalize_type(f.type)
        if t is not None:
            fields.append(pa.field(f.name, t, nullable=True))
    return pa.schema(fields)


def arrow_schema(schema: Schema) -> pa.Schema:
    """The Arrow schema rows must have to be appended to an Iceberg table with ``schema``."""
    target = schema_to_pyarrow(schema, include_field_ids=False)
    return pa.schema(pa.field(f.name, normalize_type(f.type) or f.type, f.nullable) for f in target)


def _widens(old: pa.DataType, new: pa.DataType) -> bool:
    """True when Iceberg can promote a column of type ``old`` to ``new`` (or gain struct fields)."""
    if old == pa.int32() and new == pa.int64():
        return True
    if old == pa.float32() and new == pa.float64():
        return True
    if pa.types.is_decimal(old) and pa.types.is_decimal(new):
        return bool(new.scale == old.scale and new.precision > old.precision)
    if pa.types.is_struct(old) and pa.types.is_struct(new):
        olds = {old.field(i).name: old.field(i).type for i in range(old.num_fields)}
        return any(
            (f.name not in olds) or _widens(olds[f.name], f.type)
            for f in (new.field(i) for i in range(new.num_fields))
        )
    return False


def evolution(batch: pa.Schema, table: Schema) -> pa.Schema | None:
    """The columns to ``union_by_name`` into ``table`` so that ``batch`` fits, or None.

    ``batch`` must be normalized. Incompatible types are not evolved: ``conform``
    casts them and rejects the rows that do not fit.
    """
    current = {f.name: f.type for f in arrow_schema(table)}
    changes = [f for f in batch if f.name not in current or _widens(current[f.name], f.type)]
    return pa.schema(changes) if changes else None


@dataclass
class Conformed:
    """A batch fitted to a table: the rows that land, and rejected rows with their reasons."""

    table: pa.Table
    rejected: list[tuple[pa.Table, str | list[str]]] = field(default_factory=list)
    """Rejected rows with one reason, or one per row."""


def _row_mask(n: int, rows: list[int]) -> pa.BooleanArray:
    numbers = pc.subtract(pc.cumulative_sum(pa.repeat(1, n)), 1)
    return pc.is_in(numbers, value_set=pa.array(rows, pa.int64()))


def _failing_rows(values: pa.Array, target: pa.DataType) -> pa.BooleanArray:
    """Mask of the rows whose value cannot be cast safely, found by bisection."""
    bad: list[int] = []
    stack = [(0, len(values))]
    while stack:
        offset, length = stack.pop()
        try:
            pc.cast(values.slice(offset, length), target, safe=True)
        except _CAST_ERRORS:
            if length == 1:
                bad.append(offset)
            else:
                half = length // 2
                stack += [(offset, half), (offset + half, length - half)]
    return _row_mask(len(values), bad)


def _cast(
    column: pa.ChunkedArray, target: pa.DataType
) -> tuple[pa.ChunkedArray, pa.BooleanArray | None]:
    """Cast a column; on failure also the mask of the rows that do not cast."""
    if column.type == target:
        return column, None
    if pa.types.is_timestamp(column.type) and pa.types.is_timestamp(target):
        return pc.cast(column, target, safe=False), None  # sub-microsecond truncation intended
    try:
        return pc.cast(column, target, safe=True), None
    except _CAST_ERRORS:
        pass
    values = column.combine_chunks()
    try:
        pc.cast(pa.nulls(1, values.type), target, safe=True)
    except _CAST_ERRORS:  # no cast between these types at all: every non-null value fails
        return pa.chunked_array([pa.nulls(len(values), target)]), values.is_valid()
    bad = _failing_rows(values, target)
    cleared = pc.if_else(bad, pa.nulls(len(values), values.type), values)
    return pa.chunked_array([pc.cast(cleared, target, safe=True)]), bad


def conform(batch: pa.Table, table: Schema) -> Conformed:
    """Fit ``batch`` to ``table`` (after ``evolution`` was applied): cast, fill, reorder, reject."""
    target = arrow_schema(table)
    n = batch.num_rows
    columns: list[pa.ChunkedArray] = []
    problems: list[tuple[pa.BooleanArray, str, pa.ChunkedArray, pa.DataType]] = []
    for f in target:
        if f.name not in batch.column_names or pa.types.is_null(batch.schema.field(f.name).type):
            columns.append(pa.chunked_array([pa.nulls(n, f.type)]))
            continue
        source = batch.column(f.name)
        cast, bad = _cast(source, f.type)
        columns.append(cast)
        if bad is not None and pc.any(bad).as_py():
            problems.append((bad, f.name, source, f.type))
    landed = pa.Table.from_arrays(columns, schema=target)
    if not problems:
        return Conformed(landed)
    rejected: list[tuple[pa.Table, str | list[str]]] = []
    taken = pa.repeat(False, n)
    for bad, name, source, to in problems:
        mine = pc.and_(bad, pc.invert(taken))
        if pc.any(mine).as_py():
            reasons = [  # each quotes its own value: only rejected rows reach this loop
                f"column {name!r}: {quoted(v)} ({source.type}) does not fit the lake column "
                f"type {to}; fix the producer or cast it in a transform"
                for v in pc.filter(source, mine).to_pylist()
            ]
            rejected.append((batch.filter(mine), reasons))
        taken = pc.or_(taken, bad)
    return Conformed(landed.filter(pc.invert(taken)), rejected)
