"""Schema policy: normalization, evolution plan, safe casts with per-row rejection."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
from pyiceberg.schema import Schema
from pyiceberg.types import (
    DoubleType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from tidelake.lake.schema import conform, evolution, normalize_schema

TABLE = Schema(
    NestedField(1, "id", LongType(), required=False),
    NestedField(2, "price", DoubleType(), required=False),
    NestedField(3, "name", StringType(), required=False),
    NestedField(4, "qty", IntegerType(), required=False),
)


def test_normalize_types() -> None:
    schema = pa.schema(
        [
            ("s", pa.large_string()),
            ("d", pa.dictionary(pa.int8(), pa.string())),
            ("small", pa.int8()),
            ("ts", pa.timestamp("ns", tz="Europe/Paris")),
            ("naive", pa.timestamp("ms")),
            ("empty", pa.null()),
            ("nested", pa.struct([("x", pa.large_string()), ("n", pa.null())])),
        ]
    )
    out = normalize_schema(schema)
    assert out.names == ["s", "d", "small", "ts", "naive", "nested"]
    assert out.field("s").type == pa.string() and out.field("d").type == pa.string()
    assert out.field("small").type == pa.int32()
    assert out.field("ts").type == pa.timestamp("us", tz="UTC")
    assert out.field("naive").type == pa.timestamp("us")
    assert out.field("nested").type == pa.struct([("x", pa.string()), ("n", pa.string())])


def test_evolution_adds_columns_and_widens_only_legally() -> None:
    batch = normalize_schema(
        pa.schema(
            [("id", pa.int32()), ("qty", pa.int64()), ("price", pa.string()), ("new", pa.bool_())]
        )
    )
    changes = evolution(batch, TABLE)
    assert changes is not None and changes.names == ["qty", "new"]
    assert evolution(normalize_schema(pa.schema([("id", pa.int64())])), TABLE) is None


def test_conform_casts_fills_and_rejects_row_by_row() -> None:
    batch = pa.table(
        {
            "price": pa.array(["1.5", "x", None, "2"], pa.large_string()),
            "id": pa.array([1, 2, 3, 2**63 + 5], pa.uint64()),
            "qty": pa.array([1, 2, 2**40, 4], pa.int64()),
        }
    )
    out = conform(batch, TABLE)
    assert out.table.column_names == ["id", "price", "name", "qty"]
    assert out.table.to_pydict() == {"id": [1], "price": [1.5], "name": [None], "qty": [1]}
    reasons = sorted(why for _, whys in out.rejected for why in whys)
    assert [r.split(" (")[0] for r in reasons] == [
        "column 'id': 9223372036854775813",  # each reason quotes its own row's value
        "column 'price': 'x'",
        "column 'qty': 1099511627776",
    ]
    assert sum(t.num_rows for t, _ in out.rejected) + out.table.num_rows == batch.num_rows


def test_conform_rejects_every_value_when_no_cast_exists() -> None:
    batch = pa.table({"id": [{"a": 1}, None]})
    out = conform(batch, TABLE)
    assert out.table.num_rows == 1 and out.table["id"].to_pylist() == [None]
    assert out.rejected[0][0].num_rows == 1


def test_conform_keeps_instants_of_tz_aware_timestamps() -> None:
    paris = pa.array([datetime(2024, 5, 1, 12, tzinfo=UTC)], pa.timestamp("ns", tz="Europe/Paris"))
    schema = Schema(NestedField(1, "ts", TimestamptzType(), required=False))
    out = conform(pa.table({"ts": paris}), schema)
    assert out.table["ts"].to_pylist() == [datetime(2024, 5, 1, 12, tzinfo=UTC)]
