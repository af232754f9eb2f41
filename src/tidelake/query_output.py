"""Command output: query results as a table, CSV, JSON or Parquet; log records as JSON lines.

Machine formats are written to stdout's bytes, never through rich, so nothing wraps or
cuts them; times in JSON are ISO 8601 (``2026-12-01T10:00:00+00:00``, like the API).
Tables never cut a value: on a terminal cells wrap within its width, elsewhere (a pipe,
a log file) the table is printed at its natural width.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from tidelake.errors import TidelakeError
from tidelake.formats import encode_json


def print_table(console: Console, table: Table) -> None:
    """A rich table whose values are never cut (wrapped on a terminal, full width elsewhere)."""
    for column in table.columns:
        column.overflow = "fold"
    if console.is_terminal:
        console.print(table)
        return
    natural = console.measure(table, options=console.options.update(width=1_000_000)).maximum
    width = console.width
    console.width = max(natural, width)
    try:
        console.print(table, crop=False)
    finally:
        console.width = width


def iso_times(table: pa.Table) -> pa.Table:
    """Timestamp columns as ISO 8601 text (UTC offsets written ``+00:00``), vectorized."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            column = table.column(i)
            if f.type.tz:
                utc = column.cast(pa.timestamp(f.type.unit, "UTC"))
                text = pc.binary_join_element_wise(
                    pc.strftime(utc, "%Y-%m-%dT%H:%M:%S"), "+00:00", ""
                )
            else:
                text = pc.strftime(column, "%Y-%m-%dT%H:%M:%S")
            table = table.set_column(i, pa.field(f.name, pa.string(), f.nullable), text)
    return table


def record_lines(topic: str, batch: Any) -> bytes:
    """One JSON object per record of a polled batch, each on its own line."""
    out = []
    for part, off, val in zip(batch.partitions, batch.offsets, batch.values, strict=True):
        value: Any = None
        if val is not None:
            try:
                value = orjson.loads(val)
            except orjson.JSONDecodeError:
                value = val.decode("utf-8", "replace")
        record = {"topic": topic, "partition": part, "offset": off, "value": value}
        out.append(orjson.dumps(record) + b"\n")
    return b"".join(out)


def render(result: pa.Table, fmt: str, output: Path | None, console: Console) -> None:
    if fmt == "parquet":
        if output is None:
            raise TidelakeError("--format parquet needs -o FILE")
        pq.write_table(result, output)
        return
    if fmt == "table" and output is None:
        view = Table(*result.column_names)
        for row in result.to_pylist():
            view.add_row(*("" if v is None else str(v) for v in row.values()))
        print_table(console, view)
        n = result.num_rows
        console.print(f"[dim]{n:,} row{'' if n == 1 else 's'}[/dim]")
        return
    buf = io.BytesIO()
    if fmt == "json":
        lines = encode_json(iso_times(result))
        buf.write(b"\n".join(lines) + (b"\n" if result.num_rows else b""))
    else:
        pcsv.write_csv(result, buf)
    if output is not None:
        output.write_bytes(buf.getvalue())
    else:
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.flush()
