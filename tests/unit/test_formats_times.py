"""ISO 8601 text decoded from JSON lands as timestamps, whatever its precision or offset."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from tidelake.formats import decode_json


def test_iso_times_with_fractions_and_offsets_become_timestamps() -> None:
    values = [
        b'{"ts": "2024-01-01 00:00:00.250+00", "local": "2024-01-01T10:00:00.5", "s": "x"}',
        b'{"ts": "2024-01-01T02:00:01+02:00", "local": null, "s": "2024-01-01"}',
    ]
    table, bad = decode_json(values)
    assert not bad
    assert table.schema.field("ts").type == pa.timestamp("us")
    assert table["ts"].to_pylist() == [
        datetime(2024, 1, 1, 0, 0, 0, 250_000),
        datetime(2024, 1, 1, 0, 0, 1),
    ], "offsets are applied: the values are UTC"
    assert table["local"].to_pylist() == [datetime(2024, 1, 1, 10, 0, 0, 500_000), None]
    assert table.schema.field("s").type == pa.string(), "text that is not all times stays text"


def test_mixed_offsets_and_non_times_stay_text() -> None:
    table, _ = decode_json([b'{"t": "2024-01-01T00:00:00.5Z"}', b'{"t": "2024-01-01T00:00:00.5"}'])
    assert table.schema.field("t").type == pa.string()
    table, _ = decode_json([b'{"t": "2024-01-01T00:00:00.5Z"}', b'{"t": "soon"}'])
    assert table.schema.field("t").type == pa.string()
