"""Experiment, not a peer: tidelake with the profile's fixes 1-3 applied from outside src/.

Monkeypatches (in this process only), to measure end to end what the fixes would buy:
1. decode_json with projection: an explicit pyarrow schema of the fields the job reads
   (unexpected fields ignored), falling back to tidelake's decode_json on any failure;
2. encode_json on one reused DuckDB connection instead of duckdb.connect() per batch;
3. filter fused into the sql transform (bench/pipelines/users_w1_fused.yaml).
pseudonymize (fix 4) needs native code and is unchanged.
"""

from __future__ import annotations

import io

import duckdb
import pyarrow as pa
import pyarrow.json as pj

from bench.workers import tidelake as base

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("name", pa.struct([("first", pa.string()), ("last", pa.string())])),
        ("email", pa.string()),
        ("phone", pa.string()),
        ("dob", pa.struct([("date", pa.string())])),
        ("location", pa.struct([("country", pa.string())])),
    ]
)


def patch() -> None:
    import tidelake.formats.json as fj
    import tidelake.sinks.topic as sink_topic
    import tidelake.sources.topic as source_topic

    original = fj.decode_json
    parse = pj.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore")

    def decode_projected(values):
        if values and all(v is not None for v in values):
            data = b"\n".join(values)
            try:
                opts = pj.ReadOptions(block_size=max(len(data) + 1, 1 << 20), use_threads=False)
                table = pj.read_json(io.BytesIO(data), read_options=opts, parse_options=parse)
                if table.num_rows == len(values):
                    return table, []
            except pa.ArrowInvalid:
                pass
        return original(values)

    con = duckdb.connect()

    def encode_reused(table: pa.Table) -> list[bytes]:
        if table.num_rows == 0:
            return []
        con.register("batch", table)
        try:
            out = con.sql("SELECT CAST(to_json(b) AS BLOB) FROM batch b").to_arrow_table()
        finally:
            con.unregister("batch")
        return out.column(0).to_pylist()

    source_topic.decode_json = decode_projected
    sink_topic.encode_json = encode_reused


if __name__ == "__main__":
    patch()
    base.PIPELINE = base.PIPELINE.parent / "users_w1_fused.yaml"
    base.main()
