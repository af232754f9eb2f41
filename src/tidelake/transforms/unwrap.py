"""``unwrap``: Debezium change envelopes -> the changed rows as typed columns.

Like Debezium's ``ExtractNewRecordState``: each envelope becomes its row image (``after``,
or ``before`` for deletes) expanded into columns, plus

- ``_op``: ``c``/``u``/``d``/``r`` — deletes are kept as rows (their key and old values),
  so ``table`` sink ``mode: upsert, key: [...], delete_when: "_op = 'd'"`` keeps the
  current state;
- ``_ts``: the envelope's ``ts_ms`` as a UTC timestamp;
- ``_lsn``: the source position (``source.lsn``);
- ``_table``: ``<schema>.<table>`` from ``source``.

Accepts both envelope forms: the CDC source's (images as JSON strings) and a topic
source's (images decoded into structs; also ``{"schema":..., "payload":...}`` records).
Tombstones and events without an image (truncates) are dropped. Everything is
vectorized: DuckDB picks images and metadata, Arrow's JSON reader parses all images of a
batch at once.
"""

from __future__ import annotations

import io
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from pydantic import Field

from tidelake.errors import ConfigError
from tidelake.formats import decode_json
from tidelake.formats.json import json_text
from tidelake.identifiers import quote
from tidelake.runtime.base import PROVENANCE, ConnectorConfig, FlowContext, Transform
from tidelake.transforms.sql import BATCH, BatchSQL

META = ("_op", "_ts", "_lsn", "_table")


class Unwrap(Transform):
    class Config(ConnectorConfig):
        type: Literal["unwrap"]
        table: str | None = Field(
            None, description="keep only this source table: 'schema.table' or 'table'"
        )
        deletes: Literal["keep", "drop"] = Field(
            "keep", description="keep: deletes become rows with _op = 'd'; drop: leave them out"
        )

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.engine = BatchSQL()
        self.types: dict[str, pa.DataType] = {}

    def open(self, ctx: FlowContext) -> None:
        self.ctx = ctx

    def __call__(self, table: pa.Table) -> pa.Table:
        if "payload" in table.column_names and "op" not in table.column_names:
            table = _payload(table)
        missing = [c for c in ("op", "after") if c not in table.column_names]
        if missing:
            raise ConfigError(
                f"unwrap: the batch is not a change envelope: no {', '.join(missing)} column "
                f"(columns: {', '.join(table.column_names)}); put unwrap right after a cdc "
                "source or a topic source reading Debezium topics"
            )
        meta = self.engine.query(table, self._select(table), "unwrap")
        if not meta.num_rows:
            return _empty_result(table)
        rows = _parse(meta.column("image"))
        out = rows
        for name in META:
            col = meta.column(name)
            if name == "_ts":
                col = col.cast(pa.timestamp("ms", "UTC"))
            out = out.append_column(name, col)
        for name in PROVENANCE:
            if name in meta.column_names:
                out = out.append_column(name, meta.column(name))
        return self._stable_types(out)

    def _select(self, table: pa.Table) -> str:
        schema = table.schema

        def as_json(col: str) -> str:
            return json_text(table, col)

        def source_field(name: str, cast: str) -> str:
            if "source" not in schema.names or pa.types.is_null(schema.field("source").type):
                return f"CAST(NULL AS {cast})"
            ftype = schema.field("source").type
            if pa.types.is_struct(ftype):
                if ftype.get_field_index(name) < 0:
                    return f"CAST(NULL AS {cast})"
                return f"TRY_CAST(source.{quote(name)} AS {cast})"
            return f"TRY_CAST(json_extract_string(source, '$.{name}') AS {cast})"

        image = f"CASE WHEN op = 'd' THEN {as_json('before')} ELSE {as_json('after')} END"
        ts = "CAST(ts_ms AS BIGINT)" if "ts_ms" in schema.names else "CAST(NULL AS BIGINT)"
        sch, name = source_field("schema", "VARCHAR"), source_field("table", "VARCHAR")
        tbl = f"CASE WHEN {sch} IS NULL THEN {name} ELSE {sch} || '.' || {name} END"
        provenance = [quote(c) for c in PROVENANCE if c in schema.names]
        inner = ", ".join(
            [
                f"{image} AS image",
                "CAST(op AS VARCHAR) AS _op",
                f"{ts} AS _ts",
                f"{source_field('lsn', 'BIGINT')} AS _lsn",
                f"{tbl} AS _table",
                *provenance,
            ]
        )
        where = ["image IS NOT NULL", "_op IS NOT NULL"]
        if self.config.deletes == "drop":
            where.append("_op <> 'd'")
        if self.config.table is not None:
            wanted = self.config.table.replace("'", "''")
            if "." in wanted:
                where.append(f"_table = '{wanted}'")
            else:
                where.append(f"(_table = '{wanted}' OR ends_with(_table, '.{wanted}'))")
        return f"SELECT * FROM (SELECT {inner} FROM {BATCH}) WHERE {' AND '.join(where)}"

    def _stable_types(self, out: pa.Table) -> pa.Table:
        """Columns all-null in this batch take the type they had in earlier batches, so a
        sink sees one schema even when a batch holds only deletes or only NULLs."""
        for i, f in enumerate(out.schema):
            known = self.types.get(f.name)
            if pa.types.is_null(f.type):
                if known is not None:
                    out = out.set_column(i, f.name, pa.nulls(out.num_rows, known))
            elif known is None:
                self.types[f.name] = f.type
        return out


def _payload(table: pa.Table) -> pa.Table:
    """``{"schema":..., "payload":{...}}`` records (JsonConverter with schemas) -> envelopes."""
    payload = table.column("payload").combine_chunks()
    if not pa.types.is_struct(payload.type):
        raise ConfigError("unwrap: 'payload' is not an object; expected Debezium JSON envelopes")
    cols = {f.name: payload.field(i) for i, f in enumerate(payload.type)}
    for name in PROVENANCE:
        if name in table.column_names:
            cols[name] = table.column(name).combine_chunks()
    return pa.table(cols)


def _parse(images: pa.ChunkedArray) -> pa.Table:
    """All JSON images at once through Arrow's reader (objects are newline-free JSON)."""
    arr = images.combine_chunks()
    one_list = pa.LargeListArray.from_arrays(pa.array([0, len(arr)], pa.int64()), arr)
    lists = one_list.cast(pa.large_list(pa.large_string()))
    joined = pc.binary_join(lists, pa.scalar("\n", pa.large_string()))[0]
    blob = joined.as_buffer().to_pybytes() if joined.is_valid else b""
    try:
        opts = pj.ReadOptions(block_size=max(len(blob) + 1, 1 << 20), use_threads=False)
        parsed = pj.read_json(io.BytesIO(blob), read_options=opts)
        if parsed.num_rows == len(arr):
            return parsed
    except pa.ArrowInvalid:
        pass
    parsed, bad = decode_json([v.encode() for v in arr.to_pylist()])
    if bad:
        raise ConfigError(f"unwrap: row image {bad[0][0]} is not a JSON object: {bad[0][1]}")
    return parsed


def _empty_result(table: pa.Table) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "_op": pa.array([], pa.string()),
        "_ts": pa.array([], pa.timestamp("ms", "UTC")),
        "_lsn": pa.array([], pa.int64()),
        "_table": pa.array([], pa.string()),
    }
    for name in PROVENANCE:
        if name in table.column_names:
            cols[name] = pa.array([], table.schema.field(name).type)
    return pa.table(cols)
