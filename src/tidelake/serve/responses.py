"""JSON responses of the API: orjson bodies, and query results as columns + rows."""

from __future__ import annotations

import base64
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
from fastapi.responses import Response


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot encode {type(value).__name__}")


def json_response(payload: Any, status: int = 200) -> Response:
    body = orjson.dumps(payload, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    return Response(body, status_code=status, media_type="application/json")


def rows_response(table: pa.Table, limit: int, started: float) -> Response:
    truncated = table.num_rows > limit
    if truncated:
        table = table.slice(0, limit)
    columns = [c.to_pylist() for c in table.columns]
    rows = [list(r) for r in zip(*columns, strict=True)] if columns else []
    payload = {
        "columns": [
            {"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in table.schema
        ],
        "rows": rows,
        "row_count": len(rows),
        "truncated": truncated,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    try:
        return json_response(payload)
    except orjson.JSONEncodeError:  # integers beyond 64 bits (HUGEINT) become strings
        payload["rows"] = [[_wide(v) for v in row] for row in rows]
        return json_response(payload)


def _wide(value: Any) -> Any:
    return str(value) if isinstance(value, int) and abs(value) >= 2**63 else value
