from pathlib import Path

import pytest

from tidelake.config import interpolate, load, loads
from tidelake.errors import ConfigError

GOOD = """\
name: demo
broker: ${TL_TEST_BROKER:-embedded}
flows:
  land:
    source: {type: topic, topic: events}
    sink: {type: table, table: events}
    batch: {size: 500, max_latency: 0.5}
"""


def test_loads_and_interpolates_defaults(tmp_path: Path) -> None:
    p = loads(GOOD, tmp_path / "p.yaml")
    assert p.broker == "embedded"
    assert p.flows["land"].batch.size == 500
    assert p.flows["land"].source.type == "topic"
    assert p.base_dir == tmp_path.resolve()


def test_environment_overrides_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TL_TEST_BROKER", "kafka://127.0.0.1:9092")
    assert loads(GOOD, tmp_path / "p.yaml").broker == "kafka://127.0.0.1:9092"


def test_unset_variable_without_default_is_an_error() -> None:
    with pytest.raises(KeyError):
        interpolate("${TL_SURELY_UNSET}", env={})
    assert interpolate("a ${X:-b} c", env={}) == "a b c"


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    bad = GOOD.replace("sink: {type: table, table: events}", "sink: {type: table, tabel: events}")
    f = tmp_path / "bad.yaml"
    f.write_text(bad)
    with pytest.raises(ConfigError) as e:
        load(f)
    msg = str(e.value)
    assert f"{f}:6: flows.land.sink.tabel: unknown key" in msg
    assert "flows.land.sink.table: required key is missing" in msg


def test_unknown_connector_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r":5: flows.land.source.type: unknown source type 'kafkaa'"
    ):
        loads(GOOD.replace("type: topic", "type: kafkaa"), tmp_path / "p.yaml")


def test_unknown_top_level_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"p.yaml:1: brokers: unknown key"):
        loads("brokers: x\n" + GOOD, tmp_path / "p.yaml")


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"p.yaml:4: invalid YAML"):
        loads("name: x\nflows:\n  a: [\n", tmp_path / "p.yaml")


def test_relative_urls_resolve_against_the_file(tmp_path: Path) -> None:
    p = loads(GOOD, tmp_path / "sub" / "p.yaml")
    assert p.url("sqlite:///data/x.db") == f"sqlite:///{tmp_path.resolve()}/sub/data/x.db"
    assert p.url("embedded").startswith(f"embedded:///{tmp_path.resolve()}/sub/.tidelake/")
    assert p.url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_whole_value_variables_are_typed_like_yaml(tmp_path: Path) -> None:
    text = GOOD.replace("size: 500", "size: ${TL_SIZE:-250}").replace(
        "topic: events}", "topic: events, group: ${TL_GROUP:-null}}"
    )
    text = text.replace(
        "source: {type: topic, topic: events, group: ${TL_GROUP:-null}}",
        "source:\n      type: topic\n      topic: events\n      group: ${TL_GROUP:-null}",
    )
    text = text.replace(
        "batch: {size: ${TL_SIZE:-250}, max_latency: 0.5}", "batch:\n      size: ${TL_SIZE:-250}"
    )
    p = loads(text, tmp_path / "p.yaml")
    assert p.flows["land"].batch.size == 250
    assert p.flows["land"].source.group is None  # type: ignore[attr-defined]
