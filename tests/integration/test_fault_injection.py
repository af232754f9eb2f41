"""Raise an exception at one stage in the middle of a 100,000-record run, on the embedded log
and on Kafka; then fix the cause and restart. Every valid record lands exactly once, every
poison record is a dead letter, and a fault that may clear by itself (a busy database) is
ridden through without a restart.

Faults are injected by wrapping the real code of a stage (decode, each transform, the
sink's write, the dead-letter write, the checkpoint commit, the topic sink's transaction
commit): from its Nth call on, it raises until the test "fixes" it. At revocation (another
member joins the group) and at close (the flow is stopped) the sink's write raises in the
flush they make, with rows buffered.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from topic_reader import read_to_end

from tidelake.broker import Broker, connect
from tidelake.config import loads
from tidelake.runtime import dead_letters
from tidelake.runtime.runner import FlowFailed, FlowRunner

RECORDS = 100_000
POISON_EVERY = 997  # text where the amount should be a number: a dead letter
POISON = set(range(0, RECORDS, POISON_EVERY))
VALID = RECORDS - len(POISON)

PIPELINE = """\
name: fi
broker: {broker}
database: sqlite:///out.db
flows:
  land:
    source: {{type: topic, topic: {topic}}}
    transforms:
      - {{type: pseudonymize, fields: [email]}}
      - {{type: derive, columns: {{cents: "amount * 100"}}}}
      - {{type: validate, rules: [{{column: id, min: 0}}]}}
      - {{type: sql, query: "SELECT *, amount * 2 AS doubled FROM batch"}}
    sink: {{type: table, table: out}}
    batch: {{size: 5000, max_latency: 0.2}}
"""


class Fault:
    """Makes ``owner.attr`` raise ``error`` from its ``after``-th call on (calls made while
    ``when()`` holds), until ``fixed`` (or until it raised ``times`` times: a fault that
    clears by itself)."""

    def __init__(
        self,
        owner: Any,
        attr: str,
        after: int,
        error: Callable[[], Exception],
        times: int | None = None,
        when: Callable[[], bool] = lambda: True,
    ) -> None:
        self.calls, self.raised, self.fixed = 0, 0, False
        original = getattr(owner, attr)

        def wrapper(*args: Any, **kw: Any) -> Any:
            self.calls += when()
            if not self.fixed and self.calls >= after and when():
                self.raised += 1
                self.fixed = self.raised == times
                raise error()
            return original(*args, **kw)

        self.wrapper = wrapper


def _injected() -> Exception:
    return RuntimeError("injected fault")


def _stages() -> dict[str, tuple[Any, str, int]]:
    from tidelake import db
    from tidelake.runtime.runner import FlowRunner as Runner
    from tidelake.sinks.table import TableSink
    from tidelake.sources import topic
    from tidelake.transforms import fields, pseudonymize, sql, validate

    return {
        "decode": (topic, "decode_json", 6),
        "pseudonymize": (pseudonymize.Pseudonymize, "__call__", 6),
        "derive": (fields.Derive, "__call__", 6),
        "validate": (validate.Validate, "__call__", 6),
        "sql": (sql.SqlTransform, "__call__", 6),
        "sink write": (TableSink, "write", 6),
        "dead-letter write": (Runner, "_dead_letter", 20),
        "checkpoint commit": (db.SqliteDatabase, "save_checkpoint", 6),
    }


@pytest.fixture(params=["embedded", "kafka"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "kafka":
        return request.getfixturevalue("kafka_url")  # type: ignore[no-any-return]
    return "embedded"


def _produce(url: str, pipeline_dir: Path, topic: str, records: int = RECORDS) -> None:
    broker = _connect(url, pipeline_dir)
    broker.create_topic(topic, 4)
    producer = broker.producer()
    step = min(20_000, records)
    for start in range(0, records, step):
        ids = range(start, start + step)
        producer.produce(
            topic,
            [
                orjson.dumps(
                    {
                        "id": i,
                        "email": f"u{i}@example.org",
                        "amount": "lots" if i % POISON_EVERY == 0 else i % 97,
                    }
                )
                for i in ids
            ],
            [str(i).encode() for i in ids],
        )
    producer.flush()
    producer.close()
    broker.close()


def _connect(url: str, pipeline_dir: Path) -> Broker:
    return connect(url if url != "embedded" else f"embedded://{pipeline_dir}/.tidelake/log.db")


def _dead_lettered(url: str, pipeline_dir: Path, topic: str) -> set[int]:
    """Ids of ``topic``'s records in the flow's dead-letter topic, each letter with its
    reason (written at least once: a failed attempt's letters are written again)."""
    broker = _connect(url, pipeline_dir)
    try:
        letters = [
            letter.value
            for letter in dead_letters.read(broker, "fi.land.dlq")
            if (letter.value["origin"] or {}).get("topic") == topic  # Kafka's is shared
        ]
    finally:
        broker.close()
    assert all("'amount'" in letter["reason"] for letter in letters), letters[:3]
    return {letter["payload"]["id"] for letter in letters}


def _landed(pipeline_dir: Path) -> tuple[int, int]:
    path = pipeline_dir / "out.db"
    if not path.exists():
        return 0, 0
    with sqlite3.connect(path, timeout=30) as c:
        try:
            return c.execute("SELECT count(*), count(DISTINCT id) FROM out").fetchone()
        except sqlite3.OperationalError:
            return 0, 0


def _run(
    pipeline_dir: Path,
    text: str,
    until: int | None,
    landed: Callable[[], int] | None = None,
    meanwhile: Callable[[FlowRunner], None] | None = None,
    written: bool = False,
) -> FlowRunner:
    """Run the flow until ``until`` rows landed (in ``out.db``, as ``landed()`` counts them,
    or, ``written``, as this run wrote), or until it ends by itself; ``meanwhile`` is called
    once it read 20,000 rows."""
    runner = FlowRunner(loads(text, pipeline_dir / "p.yaml"), "land", threading.Event())
    count = landed or (lambda: _landed(pipeline_dir)[0])
    if written:
        count = lambda: runner.metrics.records_out  # noqa: E731
    errors: list[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except FlowFailed as e:
            errors.append(e)

    t = threading.Thread(target=target)
    t.start()
    while meanwhile and t.is_alive() and runner.metrics.records_in < 20_000:
        t.join(0.05)
    if meanwhile:
        meanwhile(runner)
    for _ in range(1200):
        if not t.is_alive() or (until is not None and count() >= until):
            break
        t.join(0.1)
    runner.stop.set()
    t.join(60)
    assert not t.is_alive()
    return runner


TRANSFORMS = ("pseudonymize", "derive", "validate", "sql")
"""Stages that never touch the log: on Kafka they would repeat the embedded runs."""


CASES = [
    (stage, log)
    for stage in _stages()
    for log in ("embedded", "kafka")
    if log == "embedded" or stage not in TRANSFORMS
]


@pytest.mark.integration
@pytest.mark.parametrize(("stage", "broker_url"), CASES, indirect=["broker_url"])
def test_a_fault_at_each_stage_then_a_fixed_restart_lands_every_record_once(
    stage: str,
    broker_url: str,
    tmp_path: Path,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIDELAKE_PSEUDONYMIZE_KEY", "fault-injection-key-0123456789abcdef")
    topic = f"fi-{unique}"
    _produce(broker_url, tmp_path, topic)
    text = PIPELINE.format(broker=broker_url, topic=topic)
    owner, attr, after = _stages()[stage]
    fault = Fault(owner, attr, after, _injected)
    monkeypatch.setattr(owner, attr, fault.wrapper)

    runner = _run(tmp_path, text, until=None)  # runs into the fault and stops there
    assert fault.raised, f"the {stage} fault never fired"
    assert runner.metrics.state == "failed"
    assert "injected fault" in runner.metrics.last_error
    count, distinct = _landed(tmp_path)
    assert count == distinct < VALID  # stopped mid-stream, nothing duplicated

    fault.fixed = True
    runner = _run(tmp_path, text, until=VALID)
    assert _landed(tmp_path) == (VALID, VALID)
    assert runner.metrics.state == "stopped"
    assert _dead_lettered(broker_url, tmp_path, topic) == POISON


@pytest.mark.integration
@pytest.mark.parametrize("stage", ["revoke", "close"])
def test_a_fault_in_the_flush_of_a_revocation_or_a_close_commits_nothing(
    stage: str, broker_url: str, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are buffered (a batch bigger than the topic, a long latency) when another member
    joins the group (its partitions are revoked: the flow flushes) or the flow is stopped (it
    flushes, then closing revokes its partitions): that flush's write raises. Neither those
    rows nor their positions are committed, the flow fails, and a fixed restart lands every
    record once."""
    from tidelake.sinks.table import TableSink
    from tidelake.sources.topic import TopicSource

    monkeypatch.setenv("TIDELAKE_PSEUDONYMIZE_KEY", "fault-injection-key-0123456789abcdef")
    topic = f"fi-{unique}"
    _produce(broker_url, tmp_path, topic)
    text = PIPELINE.format(broker=broker_url, topic=topic)
    buffered = text.replace("size: 5000, max_latency: 0.2", "size: 200000, max_latency: 60")
    armed = threading.Event()
    # once: the flush that closing makes next must find nothing to commit, not a fault
    fault = Fault(TableSink, "write", 1, _injected, times=1, when=armed.is_set)
    monkeypatch.setattr(TableSink, "write", fault.wrapper)
    revoke = TopicSource._on_revoke

    def revoking(source: TopicSource, partitions: list[tuple[str, int]]) -> None:
        if stage == "revoke":
            armed.set()
        try:
            revoke(source, partitions)
        finally:
            armed.clear()

    monkeypatch.setattr(TopicSource, "_on_revoke", revoking)

    def meanwhile(runner: FlowRunner) -> None:
        if stage == "close":
            armed.set()
            runner.stop.set()
            return
        broker = _connect(broker_url, tmp_path)  # a second member of the flow's group
        member = broker.consumer("fi.land", [topic])
        deadline = time.monotonic() + 60
        while not fault.raised and time.monotonic() < deadline:
            member.poll(100, 0.2)
        member.close()
        broker.close()

    runner = _run(tmp_path, buffered, until=None, meanwhile=meanwhile)
    assert fault.raised == 1, f"the {stage} fault never fired"
    assert runner.metrics.state == "failed"
    assert "injected fault" in runner.metrics.last_error
    assert _landed(tmp_path) == (0, 0)  # nothing was flushed before

    runner = _run(tmp_path, text, until=VALID)
    assert _landed(tmp_path) == (VALID, VALID)
    assert runner.metrics.state == "stopped"
    assert _dead_lettered(broker_url, tmp_path, topic) == POISON


@pytest.mark.integration
def test_a_busy_database_is_ridden_through_without_a_restart(
    broker_url: str, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidelake.sinks.table import TableSink

    monkeypatch.setenv("TIDELAKE_PSEUDONYMIZE_KEY", "fault-injection-key-0123456789abcdef")
    topic = f"fi-{unique}"
    _produce(broker_url, tmp_path, topic)
    busy = Fault(TableSink, "write", 4, lambda: sqlite3.OperationalError("database is locked"), 2)
    monkeypatch.setattr(TableSink, "write", busy.wrapper)
    runner = _run(tmp_path, PIPELINE.format(broker=broker_url, topic=topic), until=VALID)
    assert busy.raised == 2
    assert _landed(tmp_path) == (VALID, VALID)
    assert runner.metrics.errors == 2 and runner.metrics.state == "stopped"


@pytest.mark.integration
def test_a_failed_advisory_offset_commit_does_not_stop_the_flow(
    broker_url: str, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Committing group offsets (e.g. refused with ILLEGAL_GENERATION after a rebalance) only
    informs lag: the flow resumes from its sink's checkpoint, so it goes on."""
    from tidelake.sources.topic import TopicSource

    monkeypatch.setenv("TIDELAKE_PSEUDONYMIZE_KEY", "fault-injection-key-0123456789abcdef")
    topic = f"fi-{unique}"
    _produce(broker_url, tmp_path, topic)
    refused = Fault(TopicSource, "committed", 3, lambda: RuntimeError("ILLEGAL_GENERATION"))
    monkeypatch.setattr(TopicSource, "committed", refused.wrapper)
    runner = _run(tmp_path, PIPELINE.format(broker=broker_url, topic=topic), until=VALID)
    assert refused.raised > 1
    assert _landed(tmp_path) == (VALID, VALID)
    assert runner.metrics.errors == 0 and runner.metrics.state == "stopped"


STORE_RECORDS = 2_500
STORE_VALID = STORE_RECORDS - len(range(0, STORE_RECORDS, POISON_EVERY))


def _cassandra_case(request: pytest.FixtureRequest, unique: str) -> tuple[str, Callable[[], int]]:
    """The sink's URL, and how many distinct ids landed (rows are upserts by id)."""
    url, cql = request.getfixturevalue("cassandra_url"), request.getfixturevalue("cql")

    def landed() -> int:
        try:
            return int(cql.execute(f"SELECT count(*) FROM fi_{unique}.out").one()[0])
        except Exception:  # noqa: BLE001 - created by the first batch
            return 0

    return f"{url}/fi_{unique}", landed


def _mongodb_case(request: pytest.FixtureRequest, unique: str) -> tuple[str, Callable[[], int]]:
    url, mongo = request.getfixturevalue("mongodb_url"), request.getfixturevalue("mongo")
    return f"{url}{mongo.name}", lambda: int(mongo["out"].count_documents({}))


def _store_faults() -> dict[str, tuple[Any, str, int]]:
    """Where each store sink fails after its rows landed and before its positions did."""
    import pymongo.collection

    from tidelake.sinks.cassandra import CassandraSink

    return {
        # _run executes the rows, then the checkpoint: the 12th call is the 6th checkpoint
        "cassandra": (CassandraSink, "_run", 12),
        # the checkpoint document is the sink's only replace_one
        "mongodb": (pymongo.collection.Collection, "replace_one", 6),
    }


@pytest.mark.integration
@pytest.mark.parametrize("store", ["cassandra", "mongodb"])
def test_a_store_sink_failing_between_rows_and_positions_lands_every_record_once(
    store: str,
    tmp_path: Path,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """The same pipeline through ``table`` with a cassandra:// or mongodb:// database: a fault
    after a batch's rows and before its positions, then a fixed restart that re-delivers that
    batch (an upsert by id overwrites it) and the rest."""
    monkeypatch.setenv("TIDELAKE_PSEUDONYMIZE_KEY", "fault-injection-key-0123456789abcdef")
    url, landed = (_cassandra_case if store == "cassandra" else _mongodb_case)(request, unique)
    topic = f"fi-{unique}"
    _produce("embedded", tmp_path, topic, STORE_RECORDS)
    text = PIPELINE.format(broker="embedded", topic=topic).replace(
        "sink: {type: table, table: out}",
        f'sink: {{type: table, table: out, mode: upsert, key: [id], database: "{url}"}}',
    )
    text = text.replace("size: 5000", "size: 250")
    owner, attr, after = _store_faults()[store]
    fault = Fault(owner, attr, after, _injected)
    monkeypatch.setattr(owner, attr, fault.wrapper)

    runner = FlowRunner(loads(text, tmp_path / "p.yaml"), "land", threading.Event())
    with pytest.raises(FlowFailed, match="injected fault"):
        runner.run()
    assert 0 < landed() < STORE_VALID  # stopped mid-stream
    fault.fixed = True
    runner = _run(tmp_path, text, until=STORE_VALID, landed=landed)
    assert landed() == STORE_VALID
    assert runner.metrics.state == "stopped"


def _copied(url: str, pipeline_dir: Path, topic: str) -> tuple[int, int]:
    """(records, distinct ids) committed to ``topic``, read to its end."""
    broker = _connect(url, pipeline_dir)
    try:
        ids = [r["id"] for r in read_to_end(broker, topic)]
    finally:
        broker.close()
    return len(ids), len(set(ids))


@pytest.mark.integration
def test_a_topic_sink_failing_inside_its_transaction_lands_every_record_once(
    broker_url: str, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exactly-once topic sink: its transaction holds the batch's records and the group
    offsets when the commit raises; it is aborted, so none of it is visible, and a fixed
    restart writes every record once."""
    from tidelake.broker.embedded import EmbeddedTransactionalProducer
    from tidelake.broker.kafka import KafkaTransactionalProducer

    monkeypatch.setenv("TIDELAKE_PSEUDONYMIZE_KEY", "fault-injection-key-0123456789abcdef")
    topic, out = f"fi-{unique}", f"fi-{unique}-out"
    _produce(broker_url, tmp_path, topic)
    text = PIPELINE.format(broker=broker_url, topic=topic).replace(
        "sink: {type: table, table: out}", f"sink: {{type: topic, topic: {out}}}"
    )
    kafka = broker_url != "embedded"
    owner = KafkaTransactionalProducer if kafka else EmbeddedTransactionalProducer
    fault = Fault(owner, "commit", 6, _injected)
    monkeypatch.setattr(owner, "commit", fault.wrapper)

    runner = _run(tmp_path, text, until=None)
    assert fault.raised and runner.metrics.state == "failed"
    assert "injected fault" in runner.metrics.last_error
    count, distinct = _copied(broker_url, tmp_path, out)
    assert count == distinct < VALID  # five batches committed, the sixth aborted

    fault.fixed = True
    runner = _run(tmp_path, text, until=VALID - count, written=True)
    assert _copied(broker_url, tmp_path, out) == (VALID, VALID)
    assert _dead_lettered(broker_url, tmp_path, topic) == POISON
