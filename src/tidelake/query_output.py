"""Print or save a query result as a terminal table, CSV, JSON or Parquet."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from tidelake.errors import TidelakeError
from tidelake.formats import encode_json


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
        console.print(view)
        console.print(f"[dim]{result.num_rows:,} rows[/dim]")
        return
    buf = io.BytesIO()
    if fmt == "json":
        buf.write(b"\n".join(encode_json(result)) + (b"\n" if result.num_rows else b""))
    else:
        pcsv.write_csv(result, buf)
    if output is not None:
        output.write_bytes(buf.getvalue())
    else:
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.flush()
