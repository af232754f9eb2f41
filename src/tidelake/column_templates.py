"""Names rendered from column values: ``"cdc.{_table}"`` gives one string per row, vectorized.

The topic sink routes rows to topics and the lake sink to tables this way; each decides
what a missing column or a NULL value means for it.
"""

from __future__ import annotations

import string

import pyarrow as pa
import pyarrow.compute as pc


def fields(template: str) -> list[str]:
    """The columns ``template`` uses, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def render(template: str, table: pa.Table) -> pa.ChunkedArray:
    """``template`` filled per row with the row's values as text; NULL where one is NULL.

    Every field must be a column of ``table`` (check with ``fields`` first).
    """
    parts: list[pa.ChunkedArray | pa.Scalar] = []
    for literal, name, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(pa.scalar(literal))
        if name:
            parts.append(pc.cast(table.column(name), pa.string()))
    rendered: pa.ChunkedArray = pc.binary_join_element_wise(*parts, "")
    return rendered
