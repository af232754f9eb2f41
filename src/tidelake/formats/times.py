"""ISO 8601 text -> Arrow timestamps, a whole column at a time.

JSON has no time type, so times travel as text. Arrow's JSON reader recognizes only
``YYYY-MM-DD hh:mm:ss`` without fractions, so a batch whose times carry milliseconds
would land as strings (and ``date_trunc('minute', ts)`` fails on the lake table).
``parse_times`` turns a string column into a timestamp when every non-null value is an
ISO 8601 date-time, all with an offset (``Z``, ``+00``, ``+02:00``) or none: a naive
``timestamp[us]`` holding UTC when they carry offsets (as Arrow's reader does for
``2024-01-01 00:00:00+00``), the wall time as written when none do. Mixed or other
text stays a string.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

_ZONE = r"(Z|[+-]\d{2}(:?\d{2})?)"
_ISO = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?" + _ZONE + "?$"
_OFFSET = _ZONE + "$"


def _as_time(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    values = column.drop_null()
    if len(values) == 0:
        return None
    if not pc.all(pc.match_substring_regex(values, _ISO)).as_py():
        return None
    offsets = pc.sum(pc.match_substring_regex(values, _OFFSET).cast(pa.int64())).as_py()
    if offsets not in (0, len(values)):
        return None
    try:
        if offsets:
            return column.cast(pa.timestamp("us", "UTC")).cast(pa.timestamp("us"))
        return column.cast(pa.timestamp("us"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def parse_times(table: pa.Table) -> pa.Table:
    """``table`` with its ISO 8601 string columns as timestamps (other columns unchanged)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            parsed = _as_time(table.column(i))
            if parsed is not None:
                table = table.set_column(i, pa.field(f.name, parsed.type, f.nullable), parsed)
    return table
