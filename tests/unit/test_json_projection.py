"""Projected decode: a topic source decodes only the columns its flow's first ``sql``
transform reads (DuckDB's plan says which), typed as the last batch decoded whole, and
decodes a batch whole again when it does not fit."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import orjson
import pyarrow as pa

from tidelake.broker.embedded import EmbeddedBroker
from tidelake.config import loads
from tidelake.formats.json import decode_json, project_schema
from tidelake.runtime.runner import FlowRunner
from tidelake.transforms.sql import BatchSQL

USER = pa.schema(
    [
        ("id", pa.string()),
        ("name", pa.struct([("first", pa.string()), ("last", pa.string())])),
        ("loc", pa.struct([("city", pa.string()), ("geo", pa.struct([("lat", pa.float64())]))])),
        ("n", pa.int64()),
    ]
)


def test_project_schema_keeps_the_fields_at_the_paths_in_their_order() -> None:
    cut = project_schema(USER, ["n", "loc.geo.lat", "name.last"])
    assert cut == pa.schema(
        [
            ("name", pa.struct([("last", pa.string())])),
            ("loc", pa.struct([("geo", pa.struct([("lat", pa.float64())]))])),
            ("n", pa.int64()),
        ]
    )
    assert project_schema(USER, ["name", "name.first"]) == pa.schema([USER.field("name")])
    assert project_schema(USER, ["age"]) is None  # not in the schema
    dotted = pa.schema([("a.b", pa.int64()), ("a", pa.struct([("b", pa.int64())]))])
    assert project_schema(dotted, ["a.b"]) is None  # names two fields


def test_decode_with_a_schema_reads_only_its_fields_and_falls_back_whole() -> None:
    rows = [
        {"id": "u1", "name": {"first": "Ada", "last": "L"}, "loc": {"city": "x"}, "n": 1},
        {"id": "u2", "name": {"first": "Bo", "last": "M"}, "extra": {"deep": [1, 2]}, "n": 2},
    ]
    values = [orjson.dumps(r) for r in rows]
    whole, _ = decode_json(values)
    cut = project_schema(whole.schema, ["id", "name.last"])
    assert cut is not None
    table, bad = decode_json(values, cut)
    assert bad == [] and table.schema == cut
    assert table.to_pylist() == [
        {"id": "u1", "name": {"last": "L"}},
        {"id": "u2", "name": {"last": "M"}},
    ]
    # a read field of another type than the schema's: that batch is decoded whole
    other, bad = decode_json([orjson.dumps({"id": 7, "name": {"last": "Z"}})], cut)
    assert bad == [] and other.column("id").to_pylist() == [7]


def test_the_columns_a_query_reads_come_from_duckdbs_plan() -> None:
    sql = BatchSQL()
    query = "SELECT id, name.last || '!' AS x FROM batch WHERE n > 1"
    assert sql.reads(query, USER) == ["id", "n", "name.last"]
    assert sql.reads("SELECT * FROM batch", USER) == ["id", "loc", "n", "name"]
    assert sql.reads("SELECT name.* FROM batch", USER) == ["name.first", "name.last"]
    assert sql.reads("SELECT no_such_column FROM batch", USER) is None


PIPELINE = """\
name: t
broker: embedded
database: sqlite:///out.db
flows:
  land:
    source: {type: topic, topic: events}
    transforms:
      - {type: sql, query: "SELECT id, name.last AS last FROM batch"}
    sink: {type: table, table: events}
    batch: {size: 1000, max_latency: 0.1}
"""


def test_a_field_the_flow_never_reads_cannot_make_a_record_bad(tmp_path: Path) -> None:
    """Decoded whole, a batch whose ``extra`` is mostly a number dead-letters the record
    where it is an object; the flow reads only ``id`` and ``name.last``, so from the
    second batch on ``extra`` is skipped and every record lands."""
    broker = EmbeddedBroker(str(tmp_path / ".tidelake" / "log.db"))
    prod = broker.producer()

    def send(ids: range, odd: int | None = None) -> None:
        values = [
            orjson.dumps({"id": i, "name": {"last": f"n{i}"}, "extra": {"o": 1} if i == odd else i})
            for i in ids
        ]
        prod.produce("events", values)

    def landed() -> int:
        try:
            with sqlite3.connect(tmp_path / "out.db") as c:
                return int(c.execute("SELECT count(*) FROM events").fetchone()[0])
        except sqlite3.OperationalError:
            return 0

    send(range(10))
    stop = threading.Event()
    runner = FlowRunner(loads(PIPELINE, tmp_path / "p.yaml"), "land", stop)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        for want, more in ((10, range(10, 20)), (20, None)):
            deadline = time.monotonic() + 20
            while landed() < want and time.monotonic() < deadline:
                time.sleep(0.05)
            if more:
                send(more, odd=15)
    finally:
        stop.set()
        thread.join(10)
    prod.close()
    with sqlite3.connect(tmp_path / "out.db") as c:
        rows = c.execute("SELECT id, last FROM events ORDER BY id").fetchall()
    assert rows == [(i, f"n{i}") for i in range(20)]
    assert runner.metrics.dead_letters == 0
    assert runner.source._schema is not None and runner.source._schema.names == ["id", "name"]
