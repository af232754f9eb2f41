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


STORE = """\
name: demo
flows:
  land:
    source: {type: topic, topic: events}
    sink:
      type: table
      table: events
      mode: ${TL_MODE:-upsert}
      key: [id]
      database: ${TL_STORE:-}
"""


def test_a_table_sink_store_is_picked_by_the_database_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tidelake.sinks.cassandra import CassandraSink
    from tidelake.sinks.mongodb import MongoSink
    from tidelake.sinks.table import other_store

    assert loads(STORE, tmp_path / "p.yaml").flows["land"].sink.database is None  # the pipeline's
    for url, kind in [
        ("cassandra://127.0.0.1:9042/ks", CassandraSink),
        ("mongodb://127.0.0.1:27017/db", MongoSink),
    ]:
        monkeypatch.setenv("TL_STORE", url)
        sink = loads(STORE, tmp_path / "p.yaml").flows["land"].sink
        store = other_store(sink, url)  # type: ignore[arg-type]
        assert isinstance(store, kind) and store.config.key == ["id"]
    assert other_store(sink, "mysql://root@127.0.0.1/db") is None  # type: ignore[arg-type]


def test_a_bad_store_url_names_file_line_key_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TL_STORE", "redis://127.0.0.1/0")
    with pytest.raises(ConfigError) as e:
        loads(STORE, tmp_path / "p.yaml")
    assert "p.yaml:10: flows.land.sink.database:" in str(e.value)
    assert "'redis' is not a store" in str(e.value) and "cassandra://host:port/keyspace" in str(
        e.value
    )
    monkeypatch.setenv("TL_STORE", "cassandra://127.0.0.1/ks")
    monkeypatch.setenv("TL_MODE", "append")
    with pytest.raises(ConfigError, match=r"p.yaml:5: flows.land.sink: .*set 'mode: upsert'"):
        loads(STORE, tmp_path / "p.yaml")
    monkeypatch.setenv("TL_STORE", "mongodb://127.0.0.1/db")
    with pytest.raises(ConfigError, match=r"delete_when works on SQL databases, not on mongodb"):
        loads(STORE.replace("key: [id]", "key: [id]\n      delete_when: gone"), tmp_path / "p.yaml")
