"""The change-event rows every CDC engine produces: Debezium's envelope, one row per change.

Columns (same names, types and order for the native, SQLite and Debezium engines):

========  =======  ===============================================================
topic     string   ``<topic_prefix>.<schema>.<table>``, Debezium's topic naming
key       string   JSON object of the primary key (null for tables without one)
before    string   JSON row image before the change (null for inserts and reads)
after     string   JSON row image after the change (null for deletes)
op        string   ``c`` create, ``u`` update, ``d`` delete, ``r`` snapshot read
ts_ms     int64    when the engine processed the change (epoch milliseconds)
source    string   JSON provenance: connector, name, db, schema, table, lsn, txId,
                   snapshot, ts_ms (commit time)
========  =======  ===============================================================

Row images are JSON strings, not structs, because one batch mixes tables of different
shapes; ``unwrap`` expands them into typed columns in bulk. A ``topic`` sink with
``value: envelope`` writes each row as the ``payload`` Debezium's JsonConverter emits
with ``schemas.enable=false``.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
import pyarrow as pa

SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("key", pa.string()),
        ("before", pa.string()),
        ("after", pa.string()),
        ("op", pa.string()),
        ("ts_ms", pa.int64()),
        ("source", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
VERSION = "tidelake-cdc-1"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def default_name(pipeline: str, flow: str) -> str:
    """A slot/publication name for a flow: lower-case letters, digits and ``_``, <= 63 chars."""
    name = re.sub(r"[^a-z0-9_]", "_", f"tidelake_{pipeline}_{flow}".lower())
    return name[:63]


class EnvelopeBuilder:
    """Collects change events column by column and hands them out as Arrow tables."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.topic: list[str] = []
        self.key: list[str | None] = []
        self.before: list[str | None] = []
        self.after: list[str | None] = []
        self.op: list[str] = []
        self.ts_ms: list[int] = []
        self.source: list[str] = []

    def __len__(self) -> int:
        return len(self.op)

    def add(
        self,
        topic: str,
        key: dict[str, object] | None,
        before: dict[str, object] | None,
        after: dict[str, object] | None,
        op: str,
        ts_ms: int,
        source: dict[str, object],
    ) -> None:
        self.topic.append(topic)
        self.key.append(orjson.dumps(key).decode() if key is not None else None)
        self.before.append(orjson.dumps(before).decode() if before is not None else None)
        self.after.append(orjson.dumps(after).decode() if after is not None else None)
        self.op.append(op)
        self.ts_ms.append(ts_ms)
        self.source.append(orjson.dumps(source).decode())

    def take(self, n: int | None = None) -> pa.Table:
        """The first ``n`` events (all by default) as a table; they leave the builder."""
        n = len(self) if n is None else min(n, len(self))
        cols: tuple[list[Any], ...] = (
            self.topic,
            self.key,
            self.before,
            self.after,
            self.op,
            self.ts_ms,
            self.source,
        )
        table = pa.table(
            [pa.array(c[:n], f.type) for c, f in zip(cols, SCHEMA, strict=True)], schema=SCHEMA
        )
        for c in cols:
            del c[:n]
        return table


def empty() -> pa.Table:
    return SCHEMA.empty_table()
