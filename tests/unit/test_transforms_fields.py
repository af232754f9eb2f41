from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tidelake.config import Pipeline
from tidelake.errors import ConfigError
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.transforms.fields import Derive, Drop, Filter, Flatten, Rename


def ctx(dead: list[tuple[pa.Table, str]]) -> FlowContext:
    pipeline = Pipeline(name="t", flows={}, base_dir=Path("."))
    return FlowContext(
        "f",
        pipeline,
        FlowMetrics("f"),
        broker_factory=lambda: None,  # type: ignore[arg-type,return-value]
        dead_letter=lambda rows, reason: dead.append((rows, reason)),
    )


PEOPLE = pa.table({"first": ["Ada", "Alan"], "last": ["Lovelace", "Turing"], "age": [36, 41]})


def test_rename_keeps_order_and_rejects_unknown_columns() -> None:
    out = Rename(Rename.Config(type="rename", columns={"first": "given"}))(PEOPLE)
    assert out.column_names == ["given", "last", "age"]
    with pytest.raises(ConfigError, match="nope"):
        Rename(Rename.Config(type="rename", columns={"nope": "x"}))(PEOPLE)
    lax = Rename(Rename.Config(type="rename", columns={"nope": "x"}, strict=False))(PEOPLE)
    assert lax.column_names == PEOPLE.column_names


def test_derive_adds_and_replaces_several_columns() -> None:
    d = Derive(
        Derive.Config(
            type="derive",
            columns={"full_name": "last || ' ' || first", "age": "age + 1", "adult": "age > 40"},
        )
    )
    out = d(PEOPLE)
    assert out.column_names == ["first", "last", "age", "full_name", "adult"]
    assert out.to_pylist()[1] == {
        "first": "Alan",
        "last": "Turing",
        "age": 42,
        "full_name": "Turing Alan",
        "adult": True,
    }
    with pytest.raises(ConfigError, match="derive x"):
        Derive(Derive.Config(type="derive", columns={"x": "(1 +"}))


def test_filter_and_drop() -> None:
    out = Filter(Filter.Config(type="filter", where="age > 40"))(PEOPLE)
    assert out.column("first").to_pylist() == ["Alan"]
    out = Drop(Drop.Config(type="drop", columns=["age", "absent"]))(PEOPLE)
    assert out.column_names == ["first", "last"]
    with pytest.raises(ConfigError, match="absent"):
        Drop(Drop.Config(type="drop", columns=["absent"], strict=True))(PEOPLE)


def test_flatten_nested_structs_recursively_with_null_parents() -> None:
    t = pa.table(
        {
            "id": [1, 2],
            "name": [{"first": "Ada", "last": "L"}, None],
            "location": [
                {"city": "London", "coordinates": {"lat": 51.5, "lon": -0.1}},
                {"city": "Paris", "coordinates": None},
            ],
        }
    )
    out = Flatten(Flatten.Config(type="flatten"))(t)
    assert out.column_names == [
        "id",
        "name_first",
        "name_last",
        "location_city",
        "location_coordinates_lat",
        "location_coordinates_lon",
    ]
    assert out.to_pylist()[1] == {
        "id": 2,
        "name_first": None,
        "name_last": None,
        "location_city": "Paris",
        "location_coordinates_lat": None,
        "location_coordinates_lon": None,
    }
    only = Flatten(Flatten.Config(type="flatten", columns=["name"], separator="."))(t)
    assert only.column_names == ["id", "name.first", "name.last", "location"]


def test_flatten_parses_json_strings_and_dead_letters_invalid_ones() -> None:
    dead: list[tuple[pa.Table, str]] = []
    f = Flatten(Flatten.Config(type="flatten", parse_json=["payload"]))
    f.open(ctx(dead))
    t = pa.table(
        {"k": [1, 2, 3, 4], "payload": ['{"a": 1, "b": {"c": "x"}}', "not json", None, '{"a": -2}']}
    )
    out = f(t)
    assert out.to_pylist() == [
        {"k": 1, "payload_a": 1, "payload_b_c": "x"},
        {"k": 3, "payload_a": None, "payload_b_c": None},
        {"k": 4, "payload_a": -2, "payload_b_c": None},
    ]
    assert len(dead) == 1 and dead[0][0].column("k").to_pylist() == [2]
    assert "payload" in dead[0][1]


def test_flatten_refuses_name_collisions() -> None:
    t = pa.table({"a_b": [1], "a": [{"b": 2}]})
    with pytest.raises(ConfigError, match="a_b"):
        Flatten(Flatten.Config(type="flatten"))(t)


def test_filter_and_derive_keep_exact_types_and_row_alignment_on_big_batches() -> None:
    n = 300_000
    chunks = [
        pa.table(
            {
                "i": pa.array(range(a, a + 50_000), pa.int64()),
                "d": pa.array(["x", "y"] * 25_000).dictionary_encode(),
                "u": pa.array([a % 7] * 50_000, pa.uint8()),
            }
        )
        for a in range(0, n, 50_000)
    ]
    big = pa.concat_tables(chunks)
    out = Filter(Filter.Config(type="filter", where="i % 3 = 0"))(big)
    assert out.schema == big.schema
    assert out.column("i").to_pylist() == list(range(0, n, 3))
    derived = Derive(Derive.Config(type="derive", columns={"j": "i * 2"}))(big)
    assert derived.column("d").type == big.column("d").type
    assert derived.column("j").to_pylist() == [2 * i for i in range(n)]
