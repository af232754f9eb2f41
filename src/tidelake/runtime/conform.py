"""One type per column for the life of a flow; values that do not fit are dead letters.

A column's type is, in order: the one declared (the flow's ``schema:``, a source's
``column_types``), the one it had when the flow first saw it, or, for sources that only
have text (CSV), the type most of its values parse as. A batch in which a column arrives
as text while its type is a number, a boolean, a time or a date is cast value by value,
vectorized in DuckDB; the rows whose value does not parse leave the batch with a reason
quoting that value, and the rest of the batch goes on. So one bad value never turns a
numeric column into text for the whole batch, and never stops the flow.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from tidelake.formats.json import select
from tidelake.runtime.dead_letters import quoted

_INT = r"\s*[-+]?\d+\s*"
_FLOAT = r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*"
_BOOL = r"(?i)\s*(true|false)\s*"
_ZONE = r":\d\d(\.\d*)?\s*(Z|[+-]\d\d(:?\d\d)?)\s*$"


def _sql_type(t: pa.DataType) -> str | None:
    """The DuckDB type to TRY_CAST text into, for the types text can be checked against."""
    if pa.types.is_integer(t):  # exact width: a value past int32 does not fit an int32 column
        signed = {8: "TINYINT", 16: "SMALLINT", 32: "INTEGER", 64: "BIGINT"}[t.bit_width]
        return signed if pa.types.is_signed_integer(t) else f"U{signed}"
    if pa.types.is_floating(t):
        return "FLOAT" if t.bit_width == 32 else "DOUBLE"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision}, {t.scale})"
    return None


def _pattern(t: pa.DataType) -> str | None:
    if pa.types.is_integer(t):
        return _INT
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return _FLOAT
    if pa.types.is_boolean(t):
        return _BOOL
    return None


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


class Conformer:
    """Remembers each column's type across the batches of one flow (see the module doc)."""

    def __init__(self, declared: dict[str, pa.DataType]) -> None:
        self.types: dict[str, pa.DataType] = dict(declared)

    def __call__(self, table: pa.Table, text: bool = False) -> tuple[pa.Table, pa.Table, list[str]]:
        """(rows that conform, cast to their types; the other rows as they came; a reason
        per other row, quoting its own values). ``text``: the source only has text (CSV),
        so new text columns take the type most of their values parse as."""
        original, bad = table, None
        reasons: dict[int, list[str]] = {}
        for i, field in enumerate(original.schema):
            target = self.types.get(field.name)
            if target is None:
                column = original.column(i)
                target = _infer(column) if text and _is_text(field.type) else field.type
                if pa.types.is_null(target):
                    continue
                self.types[field.name] = target
            if field.type == target or not _is_text(field.type) or _sql_type(target) is None:
                continue  # arrow promotes number widths when batches are concatenated
            cast, failed = _cast(original.column(i), target)
            table = table.set_column(i, pa.field(field.name, target), cast)
            if failed is None:
                continue
            bad = failed if bad is None else pc.or_(bad, failed)
            texts = pc.filter(original.column(i), failed).to_pylist()
            for row, value in zip(pc.indices_nonzero(failed).to_pylist(), texts, strict=True):
                reasons.setdefault(row, []).append(
                    f"column {field.name!r}: {quoted(value)} is not a valid {target}"
                )
        if bad is None:
            return table, table.slice(0, 0), []
        why = ["; ".join(reasons[r]) for r in sorted(reasons)]
        return table.filter(pc.invert(bad)), original.filter(bad), why


def _infer(column: pa.ChunkedArray) -> pa.DataType:
    """The type most values of a text column parse as (text if none)."""
    present = pc.sum(pc.invert(pc.or_(pc.is_null(column), pc.equal(column, "")))).as_py()
    if not present:
        return pa.null()
    for t in (pa.int64(), pa.float64(), pa.bool_()):
        hits = pc.sum(pc.match_substring_regex(column, f"^{_pattern(t)}$")).as_py() or 0
        if hits * 2 > present:
            return t
    zoned = pc.sum(pc.match_substring_regex(column, _ZONE)).as_py() or 0
    t = pa.timestamp("us", tz="UTC") if zoned * 2 > present else pa.timestamp("us")
    cast, _ = _cast(column, t)
    return t if (pc.sum(pc.is_valid(cast)).as_py() or 0) * 2 > present else pa.string()


def _cast(
    column: pa.ChunkedArray, target: pa.DataType
) -> tuple[pa.ChunkedArray, pa.ChunkedArray | None]:
    """(the text column cast to ``target``, null where it did not parse; the mask of rows
    whose non-empty text did not parse, or None when all did)."""
    sql_type, pattern = _sql_type(target), _pattern(target)
    value = f"TRY_CAST(trim(v) AS {sql_type})"
    if pattern:  # DuckDB would round '12.5' into an integer column
        value = f"CASE WHEN regexp_full_match(v, '{pattern}') THEN {value} END"
    out = select(
        pa.table({"v": column}),
        f"SELECT {value} AS c, (c IS NULL AND nullif(trim(v), '') IS NOT NULL) AS bad FROM batch",
    )
    failed = out.column("bad")
    return out.column("c").cast(target), failed if pc.any(failed).as_py() else None
