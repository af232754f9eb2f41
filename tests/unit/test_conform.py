"""One type per column: inferred from CSV text by majority, declared, or kept from the first
batch; values that do not fit are rejected with a reason quoting them."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tidelake.config import loads
from tidelake.errors import ConfigError
from tidelake.runtime.conform import Conformer
from tidelake.vocabulary import pa_type


def test_csv_text_takes_the_type_most_of_its_values_parse_as() -> None:
    text = pa.table(
        {
            "n": ["1", "2", "x", "4"],
            "f": ["1.5", "2", "", "nan"],
            "b": ["true", "False", "yes", "true"],
            "zoned": ["2024-05-01T10:00:00Z", "2024-05-01 11:00:00+02:00", "soon", ""],
            "naive": ["2024-05-01 10:00:00", "2024-05-02 10:00:00", "2024-05-03", None],
            "zip": ["75001", "abc", "def", "ghi"],
        }
    )
    good, bad, reasons = Conformer({})(text, text=True)
    assert good.schema.types == [
        pa.int64(),
        pa.float64(),
        pa.bool_(),
        pa.timestamp("us", tz="UTC"),
        pa.timestamp("us"),
        pa.string(),
    ]
    assert good.column("n").to_pylist() == [1, 2]
    assert bad.column("n").to_pylist() == ["x", "4"]  # the rejected rows as they came
    assert reasons == [
        "column 'n': 'x' is not a valid int64; column 'b': 'yes' is not a valid bool; "
        "column 'zoned': 'soon' is not a valid timestamp[us, tz=UTC]",
        "column 'f': 'nan' is not a valid double",  # NaN is no number a sink can store
    ]


def test_types_stick_across_batches_and_declared_types_win() -> None:
    conform = Conformer({"code": pa_type("string"), "qty": pa_type("int")})
    first, _, _ = conform(pa.table({"qty": ["1"], "price": [1.5], "code": ["007"]}))
    assert first.schema.types == [pa.int64(), pa.float64(), pa.string()]
    later, bad, reasons = conform(pa.table({"price": ["2.5", "cheap"], "qty": ["3", "4"]}))
    assert later.column("price").to_pylist() == [2.5]
    assert reasons == ["column 'price': 'cheap' is not a valid double"]
    assert bad.to_pylist() == [{"price": "cheap", "qty": "4"}]  # the record as it came


def test_a_flow_schema_with_an_unknown_type_names_file_line_and_key(tmp_path: Path) -> None:
    text = """\
name: s
flows:
  land:
    source: {type: topic, topic: t}
    sink: {type: table, table: t}
    schema: {qty: integre}
"""
    with pytest.raises(ConfigError) as e:
        loads(text, tmp_path / "p.yaml")
    assert "p.yaml:6" in str(e.value) and "integre" in str(e.value)


def test_declared_widths_reject_values_past_them() -> None:
    conform = Conformer({"a": pa.int32(), "b": pa.uint8(), "f": pa.float32()})
    good, _, reasons = conform(
        pa.table({"a": ["1", "3000000000"], "b": ["7", "-1"], "f": ["1.5", "x"]})
    )
    assert good.to_pylist() == [{"a": 1, "b": 7, "f": 1.5}]
    assert reasons == [
        "column 'a': '3000000000' is not a valid int32; column 'b': '-1' is not a valid uint8; "
        "column 'f': 'x' is not a valid float"
    ]
