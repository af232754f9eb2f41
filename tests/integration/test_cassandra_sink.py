"""The cassandra sink on a real Cassandra 5.0 node: upserts by key, dead letters for values
that do not fit the column type, a clear error on a key mismatch, and ten kill -9s mid-stream."""

from __future__ import annotations

from pathlib import Path

import killing
import orjson
import pytest
import stores
from test_lake_evolution import read_topic

from tidelake.config import load
from tidelake.runtime.runner import FlowFailed, FlowRunner

pytestmark = pytest.mark.integration


def _keyspace(unique: str) -> str:
    return f"ks_{unique}"


def test_bad_values_go_to_dead_letters_and_the_flow_keeps_running(
    tmp_path: Path, unique: str, cassandra_url: str, cql: object
) -> None:
    ks = _keyspace(unique)
    session = cql
    session.execute(  # type: ignore[attr-defined]
        f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy',"
        " 'replication_factor': 1}"
    )
    session.execute(  # type: ignore[attr-defined]
        f"CREATE TABLE {ks}.people (id bigint PRIMARY KEY, age int, name text)"
    )
    rows = [
        {"id": 1, "age": 30, "name": "ann"},
        {"id": 2, "age": 2**40, "name": "too old for an int"},
        {"id": None, "age": 5, "name": "no key"},
        {"id": 3, "age": 41, "name": "bob"},
        {"id": 1, "age": 31, "name": "ann again"},
    ]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    broker = f"embedded:///{tmp_path}/log.db"
    (tmp_path / "p.yaml").write_text(f"""\
name: cs_{unique}
broker: {broker}
flows:
  land:
    source: {{type: file, path: in.jsonl}}
    sink: {{type: cassandra, url: "{cassandra_url}/{ks}", table: people, key: [id], ttl: 3600}}
    dead_letter: bad_{unique}
""")
    killing.run_to_exit(lambda: killing.start(tmp_path / "p.yaml"))
    got = sorted(tuple(r) for r in session.execute(f"SELECT id, age, name FROM {ks}.people"))  # type: ignore[attr-defined]
    assert got == [(1, 31, "ann again"), (3, 41, "bob")]
    ttl = session.execute(f"SELECT ttl(name) FROM {ks}.people WHERE id = 3").one()[0]  # type: ignore[attr-defined]
    assert 3500 < ttl <= 3600
    dlq = read_topic(broker, f"bad_{unique}", f"g_{unique}", 2)
    reasons = sorted(d["reason"] for d in dlq)
    assert len(dlq) == 2
    assert "column 'age'" in reasons[0] and "int" in reasons[0]
    assert "key column 'id' is null" in reasons[1]


def test_key_mismatch_with_an_existing_table_is_a_clear_error(
    tmp_path: Path, unique: str, cassandra_url: str, cql: object
) -> None:
    ks = _keyspace(unique)
    cql.execute(  # type: ignore[attr-defined]
        f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy',"
        " 'replication_factor': 1}"
    )
    cql.execute(f"CREATE TABLE {ks}.t (a int, b int, c text, PRIMARY KEY (a, b))")  # type: ignore[attr-defined]
    (tmp_path / "p.yaml").write_text(f"""\
name: cs_{unique}
broker: embedded:///{tmp_path}/log.db
flows:
  land:
    source: {{type: generator, kind: user_profiles, limit: 1}}
    sink: {{type: cassandra, url: "{cassandra_url}/{ks}", table: t, key: [a]}}
""")
    runner = FlowRunner(load(tmp_path / "p.yaml"), "land")
    with pytest.raises(FlowFailed, match=r"primary key \(a, b\) but the sink declares key: \[a\]"):
        runner.run()


def test_ten_kill_9s_mid_stream_leave_exactly_the_reference(
    tmp_path: Path, unique: str, cassandra_url: str, cql: object
) -> None:
    ks = _keyspace(unique)
    sink = f'{{type: cassandra, url: "{cassandra_url}/{ks}", table: users, key: [id]}}'

    def positions() -> int:
        try:
            rows = cql.execute(  # type: ignore[attr-defined]
                f"SELECT next_offset FROM {ks}.tidelake_checkpoints"
                " WHERE pipeline = %s AND flow = 'land'",
                (f"st_{unique}",),
            )
        except Exception:  # noqa: BLE001 - the keyspace does not exist before the first start
            return 0
        return sum(r.next_offset for r in rows)

    stores.kill_while_streaming(tmp_path, unique, sink, positions, kills=10)
    rows = list(cql.execute(f"SELECT id, seq, name, score FROM {ks}.users"))  # type: ignore[attr-defined]
    assert len(rows) == stores.KEYS
    assert {r.id: r.seq for r in rows} == stores.reference()
    for r in rows:
        expected = stores.record(r.seq)
        assert (r.name, r.score) == (expected["name"], expected["score"])
