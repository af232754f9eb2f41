"""``engine: spark``: the users scenario's profile flow and its 1-minute signup windows run as
Spark Structured Streaming queries (``local[2]``) on real Kafka, into the same Iceberg lake,
and land the same rows as tidelake's own engine over the same input, also when the Spark
driver is killed -9 mid-stream and restarted. The profile flow also lands through the
``table`` sink (upsert, as the scenario does) and the exactly-once ``topic`` sink, and
Debezium change envelopes are unwrapped, the nested profiles flattened and a python batch
function applied, on both engines."""

from __future__ import annotations

import copy
import os
import random
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from killing import kill_repeatedly, run_to_exit, run_to_target, start
from scenario_run import run_until
from topic_reader import read_to_end

from tidelake.broker import connect
from tidelake.config import Pipeline, load
from tidelake.lake import QueryEngine
from tidelake.lake.catalog import namespace, open_catalog
from tidelake.runtime.runner import run_flows
from tidelake.sources.generator import generate

pytest.importorskip("pyspark")
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 400
KEY = "spark-engine-test-key-0123456789"
FLOWS = ("users_profiles", "signups")
CHANGES = 300  # Debezium envelopes: 200 creates, 50 updates, 50 deletes
GARBAGE = b"\x00 not an envelope"  # and one record that is not JSON
KILLS = 5  # each restart pays a Spark driver start-up (~15 s)


@dataclass
class Users:
    """The users scenario on Kafka: its input in a topic, the embedded engine's tables."""

    path: Path
    pipeline: Pipeline
    expected: dict[str, int]  # rows per reference table

    def ident(self, table: str) -> str:
        return f"{namespace(self.pipeline)}.{table}"

    def rows(self, table: str) -> list[dict[str, Any]]:
        arrow = open_catalog(self.pipeline).load_table(self.ident(table)).scan().to_arrow()
        return sorted(arrow.to_pylist(), key=_row_key)

    def count(self, table: str) -> Callable[[], int]:
        def count() -> int:
            catalog = open_catalog(self.pipeline)
            if not catalog.table_exists(self.ident(table)):
                return 0
            snapshot = catalog.load_table(self.ident(table)).current_snapshot()
            return int(snapshot.summary["total-records"]) if snapshot and snapshot.summary else 0

        return count


SHOUT = """\
import pyarrow as pa
import pyarrow.compute as pc


def shout(table: pa.Table, suffix: str) -> pa.Table:
    loud = pc.binary_join_element_wise(pc.utf8_upper(table["first"]), suffix, "")
    return table.append_column("loud", loud.cast(pa.string()))
"""


CHECKED = (
    "SELECT login.uuid AS id, dob.age AS age, nat, email, _topic, _partition, _offset FROM batch"
)
RULES = [
    {"column": "age", "min": 25, "name": "adult"},
    {"column": "nat", "in": ["FR", "DE", "GB", "US", "ES", "CA"]},
    {"expression": "email NOT LIKE 'a%'", "name": "no a"},
]


def _pipeline_file(path: Path, name: str, kafka_url: str) -> None:
    """The scenario's generator, profile and signup flows, landing in the lake: as the
    reference (``_ref``), as Spark flows (``_spark``), and as flows the kill test runs
    with ``--engine spark`` (``_killed``, small batches so it is killed mid-stream)."""
    scenario = yaml.safe_load((ROOT / "scenarios" / "users" / "pipeline.yaml").read_text())
    flows: dict[str, Any] = {"profiles_in": scenario["flows"]["profiles_in"]}
    flows["profiles_in"]["source"].update(rate=None, limit=LIMIT)
    topic = flows["profiles_in"]["sink"]["topic"] = f"{name}.profiles"
    for flow_name in FLOWS:
        for suffix, extra in (
            ("ref", {}),
            ("spark", {"engine": "spark"}),
            ("killed", {"batch": {"size": 100}}),
        ):
            flow = copy.deepcopy(scenario["flows"][flow_name]) | extra
            flow["source"]["topic"] = topic
            flow["sink"] = {"type": "lake", "table": f"{flow_name}_{suffix}"}
            flows[f"{flow_name}_{suffix}"] = flow
    profiles = scenario["flows"]["users_profiles"]
    for suffix, sink in (
        ("table", profiles["sink"] | {"database": None}),  # the scenario's upsert
        ("topic", {"type": "topic", "topic": f"{name}.profiles_out"}),
    ):
        flows[f"users_profiles_{suffix}"] = copy.deepcopy(profiles) | {
            "engine": "spark",
            "source": {"type": "topic", "topic": topic},
            "sink": sink,
        }
    flat = (
        "SELECT login_uuid, name_first, location_street_number, location_city, dob_age FROM batch"
    )
    (path.parent / "shout.py").write_text(SHOUT)
    for suffix, extra in (("ref", {}), ("spark", {"engine": "spark"})):
        flows[f"shout_{suffix}"] = {
            "source": {"type": "topic", "topic": topic},
            "transforms": [
                {"type": "sql", "query": "SELECT login.uuid AS id, name.first AS first FROM batch"},
                {"type": "python", "function": "shout.py:shout", "args": {"suffix": "!"}},
            ],
            "sink": {"type": "lake", "table": f"shout_{suffix}"},
        } | extra
        flows[f"flat_{suffix}"] = {
            "source": {"type": "topic", "topic": topic},
            "transforms": [{"type": "flatten"}, {"type": "sql", "query": flat}],
            "sink": {"type": "lake", "table": f"flat_{suffix}"},
        } | extra
        flows[f"checked_{suffix}"] = {
            "source": {"type": "topic", "topic": topic},
            "transforms": [
                {"type": "sql", "query": CHECKED},
                {"type": "validate", "rules": RULES},
                {"type": "derive", "columns": {"senior": "age >= 60"}},
            ],
            "sink": {"type": "lake", "table": f"checked_{suffix}"},
        } | extra
        flows[f"changes_{suffix}"] = {
            "source": {"type": "topic", "topic": f"{name}.changes"},
            "transforms": [{"type": "unwrap"}],
            "sink": {"type": "lake", "table": f"changes_{suffix}"},
        } | extra
    doc = {"name": name, "broker": kafka_url, "database": f"sqlite:///{path.parent}/out.db",
           "spark": {"master": "local[2]"}, "flows": flows}  # fmt: skip
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture(scope="session")
def users(kafka_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Users]:
    """Input produced once; the embedded engine's tables are the reference for every test."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TIDELAKE_PSEUDONYMIZE_KEY", KEY)
    path = tmp_path_factory.mktemp("spark") / "pipeline.yaml"
    _pipeline_file(path, f"spark_users_{uuid.uuid4().hex[:8]}", kafka_url)  # a shared broker
    pipeline = load(path)
    run_flows(pipeline, ["profiles_in"], threading.Event())
    _produce_changes(pipeline)
    profiles = generate("user_profiles", 0, LIMIT, 5).to_pylist()
    last_minute = int(max(p["ts"] for p in profiles).timestamp()) // 60 * 60
    expected = {
        "users_profiles": sum(p["dob"]["age"] > 13 for p in profiles),
        "signups": len(
            {
                (int(p["ts"].timestamp()) // 60, p["nat"])
                for p in profiles
                if p["ts"].timestamp() < last_minute
            }
        ),  # fmt: skip
    }
    expected["changes"], expected["flat"], expected["shout"] = CHANGES, LIMIT, LIMIT
    expected["checked"] = sum(p["dob"]["age"] >= 25 and p["nat"] in RULES[1]["in"]
                              and not p["email"].startswith("a") for p in profiles)  # fmt: skip
    users = Users(path, pipeline, expected)
    reference = load(path)
    reference.flows = {f"{n}_ref": reference.flows[f"{n}_ref"] for n in expected}
    run_until(reference, lambda: all(users.count(f"{n}_ref")() >= expected[n] for n in expected))
    for name in expected:
        assert users.count(f"{name}_ref")() == expected[name]
    yield users
    mp.undo()


def _produce_changes(pipeline: Pipeline) -> None:
    """Envelopes as Debezium's JSON converter writes them (images as objects)."""

    def envelope(i: int, op: str, before: int | None, after: int | None) -> bytes:
        def image(version: int | None) -> dict[str, Any] | None:
            return None if version is None else {"id": i % 200, "name": f"item {i % 200}",
                                                 "qty": version}  # fmt: skip

        source = {"schema": "public", "table": "items", "lsn": 1000 + i}
        return orjson.dumps({"before": image(before), "after": image(after), "source": source,
                             "op": op, "ts_ms": 1_700_000_000_000 + i})  # fmt: skip

    values = [envelope(i, "c", None, 1) for i in range(200)]
    values += [envelope(200 + i, "u", 1, 2) for i in range(50)]
    values += [envelope(250 + i, "d", 2, None) for i in range(50)]
    values.append(GARBAGE)  # a dead letter on both engines
    broker = connect(pipeline.url(pipeline.broker))
    producer = broker.producer()
    producer.produce(f"{pipeline.name}.changes", values)
    producer.flush()
    producer.close()
    broker.close()


def _table_rows(users: Users) -> list[dict[str, Any]]:
    path = users.path.parent / "out.db"
    if not path.exists():
        return []
    with sqlite3.connect(path) as c:
        c.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in c.execute("SELECT * FROM users_profiles")]
        except sqlite3.OperationalError:  # created by the first batch
            return []


def _topic_rows(users: Users) -> list[dict[str, Any]]:
    broker = connect(users.pipeline.url(users.pipeline.broker))
    try:
        return read_to_end(broker, f"{users.pipeline.name}.profiles_out", idle=2)
    finally:
        broker.close()


def _letters(users: Users, flow: str) -> list[dict[str, Any]]:
    """The flow's dead letters without the flow's name, in origin order."""
    broker = connect(users.pipeline.url(users.pipeline.broker))
    try:
        letters = read_to_end(broker, f"{users.pipeline.name}.{flow}.dlq", idle=2)
    finally:
        broker.close()
    rows = [{k: v for k, v in letter.items() if k != "flow"} for letter in letters]
    return sorted(rows, key=lambda r: r["origin"]["offset"])


def _same(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> None:
    """The rows equal the reference's, over the rows' columns, in any order."""
    key = lambda r: r["identifiant"]  # noqa: E731
    columns = set(rows[0])
    assert sorted(rows, key=key) == sorted(
        ({k: v for k, v in r.items() if k in columns} for r in reference), key=key
    )


def test_spark_lands_the_same_rows_as_the_embedded_engine(users: Users) -> None:
    """Run as ``tidelake run --engine spark`` in its own process: forking the JVM out of this
    many-threaded test process (pyspark's launch uses a preexec_fn) can crash the child."""
    flows = [f"{n}_spark" for n in users.expected]
    flows += ["users_profiles_table", "users_profiles_topic"]

    def launch() -> Any:
        return start(users.path, flows, {"TIDELAKE_PSEUDONYMIZE_KEY": KEY}, ["--engine", "spark"])

    profiles = users.expected["users_profiles"]
    landed = lambda: int(  # noqa: E731
        all(users.count(f"{n}_spark")() >= users.expected[n] for n in users.expected)
        and len(_table_rows(users)) >= profiles
        and len(_topic_rows(users)) >= profiles
    )
    run_to_target(launch, landed, 1, timeout=420, settle=3)
    for name in users.expected:
        assert users.rows(f"{name}_spark") == users.rows(f"{name}_ref"), name
    reference = users.rows("users_profiles_ref")
    _same(_table_rows(users), reference)
    _same(_topic_rows(users), reference)  # exactly once: no record twice
    ref, spark = (_letters(users, f"checked_{e}") for e in ("ref", "spark"))
    assert len(ref) == LIMIT - users.expected["checked"]
    assert spark == ref  # the same rows, reasons and origins
    for engine in ("ref", "spark"):
        (letter,) = _letters(users, f"changes_{engine}")
        assert letter["payload"] == {"raw": GARBAGE.decode()}, letter
        assert letter["origin"]["offset"] == CHANGES
    profiles = users.rows("users_profiles_spark")
    assert all(len(p["email"]) == 64 for p in profiles)  # the HMAC, never the address
    with QueryEngine(users.pipeline) as engine:  # what tidelake query, the API, the dashboard run
        sql = "SELECT count(*) AS n, count(DISTINCT nationality) AS k FROM signups_spark"
        (counted,) = engine.sql(sql).to_pylist()
    assert counted["n"] == users.expected["signups"] and counted["k"] > 1, counted
    metrics = orjson.loads(
        (users.pipeline.state_dir / "metrics" / "users_profiles_spark.json").read_bytes()
    )
    assert metrics["records_in"] == LIMIT
    assert metrics["records_out"] == users.expected["users_profiles"]
    assert metrics["state"] == "stopped" and metrics["batches"] > 0


@pytest.mark.skipif(os.environ.get("TIDELAKE_SKIP_S3") == "1", reason="TIDELAKE_SKIP_S3=1")
def test_spark_lands_into_a_lake_on_s3(users: Users, s3_lake: dict[str, Any]) -> None:
    """The unwrap flow into a warehouse on a real S3 server (Iceberg's S3FileIO), read back
    through pyiceberg's catalog as ``tidelake query`` does; its streaming checkpoint is on S3
    beside the warehouse (Hadoop's S3A), and a second run resumes from it: the envelopes
    produced again land once more, and the first ones not twice."""
    path = users.path.parent / "s3.yaml"
    name = f"spark_s3_{uuid.uuid4().hex[:8]}"
    flow = {
        "engine": "spark",
        "source": {"type": "topic", "topic": f"{name}.changes"},
        "transforms": [{"type": "unwrap"}],
        "sink": {"type": "lake", "table": "changes"},
    }
    doc = {"name": name, "broker": users.pipeline.broker, "lake": s3_lake["url"],
           "spark": {"master": "local[2]"}, "flows": {"changes": flow}}  # fmt: skip
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    pipeline = load(path)
    s3 = Users(path, pipeline, {"changes": CHANGES})

    def rows(users: Users, table: str) -> list[dict[str, Any]]:
        skip = ("_topic", "_offset")
        return sorted(({k: v for k, v in r.items() if k not in skip} for r in users.rows(table)),
                      key=_row_key)  # fmt: skip

    for run in (1, 2):
        _produce_changes(pipeline)
        run_to_target(lambda: start(path, ["changes"], s3_lake["env"]), s3.count("changes"),
                      run * CHANGES, timeout=420, settle=3)  # fmt: skip
        assert rows(s3, "changes") == sorted(rows(users, "changes_ref") * run, key=_row_key)
        produced = range(run * (CHANGES + 1))  # the last of each run's records is GARBAGE
        offsets = [o for o in produced if o % (CHANGES + 1) != CHANGES]
        assert sorted(r["_offset"] for r in s3.rows("changes")) == offsets
    from tidelake.s3_settings import S3Settings

    bucket = S3Settings.from_env().filesystem()
    metadata = f"{s3_lake['bucket']}/lake/_spark_checkpoints/{name}/changes/metadata"
    assert bucket.get_file_info(metadata).size, "the query's checkpoint is not on S3"
    assert not (pipeline.state_dir / "spark" / "checkpoints" / "changes").exists()


def _row_key(row: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((k, str(v)) for k, v in row.items())


def test_a_killed_spark_driver_restarts_to_exactly_the_reference_rows(users: Users) -> None:
    flows = [f"{n}_killed" for n in FLOWS]
    env = {"TIDELAKE_PSEUDONYMIZE_KEY": KEY}

    def launch() -> Any:
        return start(users.path, flows, env, extra=["--engine", "spark"])

    profiles = users.count("users_profiles_killed")
    target = users.expected["users_profiles"]
    seen = kill_repeatedly(launch, profiles, target, KILLS, random.Random(7), timeout=420)
    assert seen[0] < target, f"the first kill came after everything landed: {seen}"
    signups, windows = users.count("signups_killed"), users.expected["signups"]
    landed = lambda: int(profiles() >= target and signups() >= windows)  # noqa: E731
    run_to_target(launch, landed, 1, timeout=420, settle=3)
    for name in FLOWS:
        assert users.rows(f"{name}_killed") == users.rows(f"{name}_ref"), name


def test_spark_reads_files_as_the_embedded_engine(users: Users) -> None:
    """A ``file`` source (JSON Lines with an undecodable line and a badly typed value, and CSV)
    read once by both engines: the same lake rows, and both bad records as dead letters."""
    root = users.path.parent / "files"
    (root / "jsonl").mkdir(parents=True)
    (root / "csv").mkdir()
    people = [{"id": i, "name": f"person {i}", "age": 20 + i % 50, "city": f"c{i % 7}"}
              for i in range(300)]  # fmt: skip
    lines = [orjson.dumps(p).decode() for p in people]
    lines[10] = "this is not json"
    lines[20] = orjson.dumps(people[20] | {"age": "old"}).decode()
    (root / "jsonl" / "a.jsonl").write_text("\n".join(lines[:150]) + "\n")
    (root / "jsonl" / "b.jsonl").write_text("\n".join(lines[150:]) + "\n")
    csv = ["id,name,age,city", *(f"{p['id']},{p['name']},{p['age']},{p['city']}" for p in people)]
    (root / "csv" / "people.csv").write_text("\n".join(csv) + "\n")
    name = f"spark_files_{uuid.uuid4().hex[:8]}"
    flows: dict[str, Any] = {}
    for fmt in ("jsonl", "csv"):
        for suffix, extra in (("ref", {}), ("spark", {"engine": "spark"})):
            flows[f"{fmt}_{suffix}"] = {
                "source": {"type": "file", "path": f"files/{fmt}", "file_column": "file"},
                "transforms": [{"type": "filter", "where": "age >= 25"}],
                "sink": {"type": "lake", "table": f"{fmt}_{suffix}"},
            } | extra
    path = users.path.parent / "files.yaml"
    path.write_text(yaml.safe_dump({"name": name, "broker": users.pipeline.broker,
                                    "spark": {"master": "local[2]"}, "flows": flows}))  # fmt: skip
    pipeline = load(path)
    run_flows(pipeline, ["jsonl_ref", "csv_ref"], threading.Event())
    run_to_exit(lambda: start(path, ["jsonl_spark", "csv_spark"]), timeout=300)
    files = Users(path, pipeline, {})
    expected = sum(p["age"] >= 25 for p in people)
    assert len(files.rows("csv_spark")) == expected
    assert len(files.rows("jsonl_spark")) == expected - 2
    for fmt in ("jsonl", "csv"):
        assert files.rows(f"{fmt}_spark") == files.rows(f"{fmt}_ref"), fmt
    broker = connect(pipeline.url(pipeline.broker))
    try:
        letters = read_to_end(broker, f"{name}.jsonl_spark.dlq", idle=2)
    finally:
        broker.close()
    assert sorted(str(letter["payload"]) for letter in letters) == sorted(
        [str({"raw": "this is not json"}), str(people[20] | {"age": "old"})]
    )
