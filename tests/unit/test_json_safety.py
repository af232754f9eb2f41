"""Hostile JSON at every door: refused per record, never a crash (pyarrow 26 segfaults on some)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from test_embedded_flow import _run_until

from tidelake.broker.embedded import EmbeddedBroker
from tidelake.config import loads
from tidelake.formats import json as json_format
from tidelake.formats.json import MAX_DEPTH, MAX_RECORD_BYTES, decode_json
from tidelake.runtime.runner import FlowRunner
from tidelake.serve import ingest

DEEP = "b'{\"a\": ' + b'[' * 100_000 + b']' * 100_000 + b'}'"
CRASHERS = "[b'null', b' null', b'\\nnull', " + DEEP + "]"

BAD = {
    b"null": "got null",
    b'{"a": NaN}': "invalid JSON",
    b'{"a": Infinity}': "invalid JSON",
    b'{"a": -Infinity}': "invalid JSON",
    b'{"a": Inf}': "invalid JSON",  # Arrow reads it as inf
    b'{"a": [1,-Inf]}': "invalid JSON",
    b'\xef\xbb\xbf{"a": 1}': "byte order mark",
    b'{"a": 1e400}': "infinity",
    b'{"a": 99999999999999999999}': "64 bits",
    b'{"a": 9223372036854775808}': "64 bits",
    b'{"a": -9223372036854775809}': "64 bits",
    b'{"a": "\xff"}': "UTF-8",
    b'{"a": "\\ud800"}': "surrogate",
    b'{"a": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}": "deeper than",
    b'{"a": "' + b"x" * MAX_RECORD_BYTES + b'"}': "larger than",
    b'{"a": 1}\nnull': "invalid JSON",
    b"[1]": "got an array",
    b'"x"': "got a string",
}


def test_inputs_that_crash_pyarrow_are_refused_in_a_live_process() -> None:
    """Without the guard each of these kills the interpreter (rc -11) inside read_json."""
    script = (
        "import sys\n"
        "from tidelake.formats.json import decode_json\n"
        "from tidelake.serve import ingest\n"
        f"for value in {CRASHERS}:\n"
        "    table, bad = decode_json([value, b'{\"id\": 1}'])\n"
        "    assert table.to_pylist() == [{'id': 1}] and bad[0][0] == 0, (value[:20], bad)\n"
        "    try:\n"
        "        ingest.records(value, 'application/x-ndjson')\n"
        "    except ingest.BadPayload as e:\n"
        "        assert 'nothing was written' in str(e), e\n"
        "    else:\n"
        "        raise AssertionError(value[:20])\n"
        "print('alive')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.strip() == "alive"


@pytest.mark.parametrize("value", list(BAD), ids=[v[:24].decode("latin-1") for v in BAD])
def test_each_bad_record_is_named_and_the_rest_decode(value: bytes) -> None:
    good = [b'{"id": 1, "v": 1.5}', b'{"id": 2, "v": null}']
    table, bad = decode_json([good[0], value, good[1]])
    assert table.to_pylist() == [{"id": 1, "v": 1.5}, {"id": 2, "v": None}]
    assert [i for i, _ in bad] == [1] and BAD[value] in bad[0][1], bad


def test_an_integer_that_its_float_column_cannot_hold_exactly_is_bad() -> None:
    """It made the decode raise (the flow crashed on that batch at every restart)."""
    values = [b'{"id": 1, "v": 1.5}', b'{"id": 2, "v": 1234567890123456789}', b'{"id": 3}']
    table, bad = decode_json(values)
    assert table.to_pylist() == [{"id": 1, "v": 1.5}, {"id": 3, "v": None}]
    assert [i for i, _ in bad] == [1] and "no exact value among the floats" in bad[0][1]


def test_an_integer_beyond_2_53_among_floats_is_bad_not_rounded() -> None:
    """Arrow read it into the field's doubles as 12345678901234568.0 (the fast path)."""
    values = [b'{"id": 1, "v": 1.5}', b'{"id": 2, "v": 12345678901234567}']
    values += [b'{"id": 3, "v": 9007199254740992.0}', b'{"id": 4, "v": 900719925474099}']
    table, bad = decode_json(values)
    assert table.column("id").to_pylist() == [1, 3, 4]
    assert table.column("v").to_pylist() == [1.5, 2.0**53, 900719925474099.0]
    assert [i for i, _ in bad] == [1] and "no exact value among the floats" in bad[0][1]


def test_clean_batches_keep_the_fast_path_and_their_values() -> None:
    values = [orjson.dumps({"id": i, "n": {"k": [i, i + 1]}, "s": "é\\n"}) for i in range(2000)]
    values.append(b'{"id": 9223372036854775807, "f": 1e308, "s": "NaN Infinity"}')
    table, bad = decode_json(values)
    assert bad == [] and table.num_rows == 2001
    assert table.column("id")[-1].as_py() == 2**63 - 1
    assert table.column("s")[-1].as_py() == "NaN Infinity"


def test_string_contents_never_cost_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """uuids, hex digests and text hold e123, NaN and long digit runs: only values count."""
    monkeypatch.setattr(json_format, "_decode_slow", None)  # calling it would fail the test
    values = [
        orjson.dumps(
            {"id": i, "uuid": f"6e4{i:03d}-e-123e400", "s": "NaN Inf 12345678901234567890"}
        )
        for i in range(1000)
    ]
    table, bad = decode_json([*values, b'{"id": -1, "f": -1.5e30, "t": ["a, b", "x: y"]}'])
    assert bad == [] and table.num_rows == 1001
    assert table.column("uuid")[7].as_py() == "6e4007-e-123e400"


def test_topic_source_dead_letters_hostile_records_and_lands_the_rest(tmp_path: Path) -> None:
    broker = EmbeddedBroker(str(tmp_path / ".tidelake" / "log.db"))
    prod = broker.producer()
    hostile = [b"null", b'{"id": 10, "x": NaN}', b'{"id": 11, "s": "\xff"}', b'{"id": 1e400}']
    hostile += [b'{"id": 99999999999999999999}', b'\xef\xbb\xbf{"id": 12}']
    prod.produce("events", [*hostile, b'{"id": 1}', b'{"id": 2, "name": "x"}'])
    prod.close()
    _run_until(tmp_path, 2)
    with sqlite3.connect(tmp_path / "out.db") as c:
        assert c.execute("SELECT id FROM events ORDER BY id").fetchall() == [(1,), (2,)]
    dlq = broker.consumer("check", ["t.land.dlq"]).poll(20, 2.0)
    assert len(dlq.values) == len(hostile)
    assert all(orjson.loads(v)["reason"] for v in dlq.values)


def test_a_nested_value_of_the_wrong_kind_is_bad_and_its_neighbours_keep_their_structs() -> None:
    """They became JSON text for the whole batch, so SQL over the nested field failed."""
    values = [orjson.dumps({"id": i, "loc": {"c": "FR", "n": {"x": i}}}) for i in range(3)]
    values += [b'{"id": 3, "loc": {"c": "DE", "n": {"x": "three"}}}']
    values += [b'{"id": 4, "tags": [{"a": 1}, {"a": [2]}]}', b'{"id": 5, "tags": [{"a": 5}]}']
    table, bad = decode_json(values)
    assert table.column("id").to_pylist() == [0, 1, 2, 5]
    assert table.schema.field("loc").type == pa.struct(
        [("c", pa.string()), ("n", pa.struct([("x", pa.int64())]))]
    )
    assert bad == [
        (3, "field 'loc.n.x': \"three\" is a string, expected a number"),
        (4, "field 'tags[].a': [2] is an array, expected a number"),
    ]


def test_a_flow_reading_a_nested_field_keeps_running_past_a_badly_typed_one(
    tmp_path: Path,
) -> None:
    broker = EmbeddedBroker(str(tmp_path / ".tidelake" / "log.db"))
    prod = broker.producer()
    good = [orjson.dumps({"id": i, "loc": {"n": {"x": i * 10}}}) for i in range(5)]
    prod.produce("events", [*good, b'{"id": 9, "loc": {"n": {"x": "ninety"}}}'])
    prod.close()
    pipeline = loads(
        "name: t\nbroker: embedded\ndatabase: sqlite:///out.db\nflows:\n  land:\n"
        "    source: {type: topic, topic: events}\n"
        "    transforms: [{type: sql, query: 'SELECT id, loc.n.x AS x FROM batch'}]\n"
        "    sink: {type: table, table: events}\n",
        tmp_path / "p.yaml",
    )
    stop = threading.Event()
    threading.Timer(3, stop.set).start()
    FlowRunner(pipeline, "land", stop).run()
    with sqlite3.connect(tmp_path / "out.db") as c:
        assert c.execute("SELECT id, x FROM events ORDER BY id").fetchall() == [
            (i, i * 10) for i in range(5)
        ]
    dlq = broker.consumer("check", ["t.land.dlq"]).poll(20, 2.0)
    assert [orjson.loads(v)["reason"] for v in dlq.values] == [
        "field 'loc.n.x': \"ninety\" is a string, expected a number"
    ]


@pytest.mark.parametrize("value", list(BAD), ids=[v[:24].decode("latin-1") for v in BAD])
def test_ingest_names_the_bad_line(value: bytes) -> None:
    body = b'{"id": 1}\n\n' + value.replace(b"\n", b" ") + b"\n"
    with pytest.raises(ingest.BadPayload, match="line 3: ") as info:
        ingest.records(body, "application/x-ndjson")
    assert "nothing was written" in str(info.value)


def test_ingest_json_bodies_are_checked_item_by_item() -> None:
    assert ingest.records(b'[{"a": 1}, {"b": [1, {"c": 2}]}]', "application/json") == [
        b'{"a":1}',
        b'{"b":[1,{"c":2}]}',
    ]
    for body, fragment in [
        (b'[{"a": 1}, null]', "item 1: expected a JSON object, got null"),
        (b'{"a": 99999999999999999999}', "64 bits"),
        (b'[{"a": 1}, {"a": -9223372036854775809}]', "64 bits"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'\xef\xbb\xbf{"a": 1}', "not valid JSON"),
        (b"[" + b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}]", "item 0: nested deeper"),
        (b"7", "got a number"),
    ]:
        with pytest.raises(ingest.BadPayload, match=fragment.replace("[", r"\[")):
            ingest.records(body, "application/json; charset=utf-8")
