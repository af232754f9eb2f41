"""unwrap: envelopes in string form (cdc source) and struct form (topic source) -> rows."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.json as pj
import pytest

from tidelake.errors import ConfigError
from tidelake.transforms.unwrap import Unwrap

SRC = {"connector": "postgresql", "schema": "public", "table": "movies", "lsn": 42}
EVENTS = [
    (None, {"id": 1, "title": "Heat", "rating": 4.5}, "c", SRC),
    (
        {"id": 1, "title": "Heat", "rating": 4.5},
        {"id": 1, "title": "Heat!", "rating": 5.0},
        "u",
        SRC,
    ),
    ({"id": 2, "title": None, "rating": None}, None, "d", SRC),
    (None, {"id": 7, "user_id": 3}, "c", SRC | {"table": "ratings", "lsn": 43}),
]


def _unwrap(batch: pa.Table, **options: object) -> pa.Table:
    return Unwrap(Unwrap.Config.model_validate({"type": "unwrap", **options}))(batch)


def _string_form(events: list[Any]) -> pa.Table:
    def js(v: object) -> str | None:
        return None if v is None else orjson.dumps(v).decode()

    return pa.table(
        {
            "topic": ["dbserver1.public." + e[3]["table"] for e in events],  # type: ignore[index]
            "key": [None] * len(events),
            "before": [js(e[0]) for e in events],
            "after": [js(e[1]) for e in events],
            "op": [e[2] for e in events],
            "ts_ms": [1_700_000_000_000 + i for i in range(len(events))],
            "source": [js(e[3]) for e in events],
        }
    )


def _struct_form(events: list[Any]) -> pa.Table:
    lines = b"\n".join(
        orjson.dumps({"before": b, "after": a, "op": op, "ts_ms": 1_700_000_000_000, "source": s})
        for b, a, op, s in events
    )
    table = pj.read_json(io.BytesIO(lines))
    n = table.num_rows
    table = table.append_column("_topic", pa.array(["dbserver1.public.movies"] * n))
    table = table.append_column("_partition", pa.array([0] * n, pa.int32()))
    return table.append_column("_offset", pa.array(range(n), pa.int64()))


@pytest.mark.parametrize("form", [_string_form, _struct_form])
def test_rows_ops_and_metadata(form: object) -> None:
    out = _unwrap(form(EVENTS[:3]))  # type: ignore[operator]
    assert out.select(["id", "title", "rating", "_op"]).to_pylist() == [
        {"id": 1, "title": "Heat", "rating": 4.5, "_op": "c"},
        {"id": 1, "title": "Heat!", "rating": 5.0, "_op": "u"},
        {"id": 2, "title": None, "rating": None, "_op": "d"},
    ]
    assert out.schema.field("id").type == pa.int64()
    assert out.schema.field("rating").type == pa.float64()
    assert out.schema.field("_ts").type == pa.timestamp("ms", "UTC")
    assert out.column("_lsn").to_pylist() == [42, 42, 42]
    assert set(out.column("_table").to_pylist()) == {"public.movies"}


def test_struct_form_keeps_provenance_for_fencing() -> None:
    out = _unwrap(_struct_form(EVENTS[:3]))
    assert out.column("_offset").to_pylist() == [0, 1, 2]
    assert out.column("_partition").to_pylist() == [0, 0, 0]


def test_table_filter_mixed_tables_and_deletes_drop() -> None:
    batch = _string_form(EVENTS)
    both = _unwrap(batch)
    assert set(both.column_names) >= {"id", "title", "user_id"}
    ratings = _unwrap(batch, table="public.ratings")
    assert ratings.select(["id", "user_id"]).to_pylist() == [{"id": 7, "user_id": 3}]
    assert _unwrap(batch, table="ratings").num_rows == 1
    assert _unwrap(batch, table="movies", deletes="drop").column("_op").to_pylist() == ["c", "u"]


def test_tombstones_and_imageless_events_are_dropped() -> None:
    batch = _string_form(EVENTS[:1])
    truncate = pa.table(
        {
            "topic": ["t"],
            "key": [None],
            "before": [None],
            "after": [None],
            "op": ["t"],
            "ts_ms": [1],
            "source": [orjson.dumps(SRC).decode()],
        }  # fmt: skip
    )
    tombstone = truncate.set_column(4, "op", pa.array([None], pa.string()))
    out = _unwrap(pa.concat_tables([batch, truncate, tombstone], promote_options="permissive"))
    assert out.column("_op").to_pylist() == ["c"]
    empty = _unwrap(truncate)
    assert empty.num_rows == 0 and "_op" in empty.column_names


def test_schema_payload_records() -> None:
    records = b"\n".join(
        orjson.dumps(
            {
                "schema": {"type": "struct"},
                "payload": {"before": b, "after": a, "op": o, "ts_ms": 5, "source": s},
            }
        )
        for b, a, o, s in EVENTS[:2]
    )
    out = _unwrap(pj.read_json(io.BytesIO(records)))
    assert out.column("title").to_pylist() == ["Heat", "Heat!"]


def test_all_null_column_keeps_the_type_seen_before() -> None:
    t = Unwrap(Unwrap.Config.model_validate({"type": "unwrap"}))
    t(_string_form(EVENTS[:1]))
    deletes = t(_string_form([({"id": 9, "title": None, "rating": None}, None, "d", SRC)]))
    assert deletes.schema.field("title").type == pa.string()
    assert deletes.schema.field("rating").type == pa.float64()


def test_not_an_envelope() -> None:
    with pytest.raises(ConfigError, match="not a change envelope"):
        _unwrap(pa.table({"id": [1]}))
