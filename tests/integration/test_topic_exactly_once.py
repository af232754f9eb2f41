"""Kill -9 flows that write a topic ten times mid-stream; afterwards the topic holds exactly
the input: nothing lost, nothing duplicated (the topic sink commits its records and its
checkpoint in one log transaction).

- ``generator -> topic``: 200,000 generated transactions, read back with a consumer.
- chained: ``generator -> topic A`` and ``topic A -> sql -> topic B`` in one process,
  killed together; B holds every generated id once, transformed.

On Kafka, offsets of a transactionally written topic have gaps (commit markers), so the
checks count records read by a (read_committed) consumer, never end offsets.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import killing
import orjson
import pytest

from tidelake.broker import Broker, connect
from tidelake.sources.generator import generate

RECORDS = 200_000
KILLS = 10
SEED = 11

GENERATE = """\
name: topiceo_{unique}
broker: {broker}
flows:
  produce:
    source: {{type: generator, kind: transactions, seed: {seed}, limit: {records}, rate: {rate}}}
    sink: {{type: topic, topic: {topic_a}, key: transaction_id}}
    batch: {{size: 2000, max_latency: 0.2}}
"""

RELAY = """\
  relay:
    source: {{type: topic, topic: {topic_a}}}
    transforms:
      - {{type: sql, query: "SELECT transaction_id, amount, amount * 2 AS doubled FROM batch"}}
    sink: {{type: topic, topic: {topic_b}}}
    batch: {{size: 3000, max_latency: 0.2}}
"""


class TopicReader:
    """Reads a topic as it grows (read_committed) and keeps every record's JSON value."""

    def __init__(self, broker: Broker, topic: str, group: str) -> None:
        self.consumer = broker.consumer(group, [topic])
        self.rows: list[dict[str, Any]] = []

    def count(self) -> int:
        while True:
            batch = self.consumer.poll(50_000, 0.05)
            if not len(batch):
                return len(self.rows)
            self.rows += [orjson.loads(v) for v in batch.values if v is not None]

    def settle(self, quiet: float = 3.0, timeout: float = 120) -> int:
        """Read until nothing arrived for ``quiet`` seconds (a duplicate would show up)."""
        deadline = time.monotonic() + timeout
        last, since = self.count(), time.monotonic()
        while time.monotonic() - since < quiet and time.monotonic() < deadline:
            n = self.count()
            if n != last:
                last, since = n, time.monotonic()
            time.sleep(0.1)
        return last

    def close(self) -> None:
        self.consumer.close()


def expected_amounts() -> dict[str, float]:
    data = generate("transactions", 0, RECORDS, SEED)
    return dict(
        zip(
            data.column("transaction_id").to_pylist(),
            data.column("amount").to_pylist(),
            strict=True,
        )
    )


def check_exactly_once(rows: list[dict[str, Any]], doubled: bool = False) -> None:
    ids = [r["transaction_id"] for r in rows]
    assert len(ids) == RECORDS, f"{len(ids) - RECORDS:+d} records"
    assert len(set(ids)) == RECORDS, f"{len(ids) - len(set(ids))} duplicates"
    amounts = expected_amounts()
    assert set(ids) == set(amounts), "exactly the generated ids"
    assert all(r["amount"] == amounts[r["transaction_id"]] for r in rows), "generated values"
    if doubled:
        assert all(r["doubled"] == r["amount"] * 2 for r in rows), "transformed by the relay"


def setup(
    tmp_path: Path, broker_url: str, unique: str, relay: bool
) -> tuple[Path, Broker, str, str]:
    topic_a, topic_b = f"teo_a_{unique}", f"teo_b_{unique}"
    text = GENERATE + (RELAY if relay else "")
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        text.format(
            unique=unique,
            broker=broker_url,
            seed=SEED,
            records=RECORDS,
            rate=12_500 if relay else 20_000,  # slow enough for 10 kills; whole us per record
            topic_a=topic_a,
            topic_b=topic_b,
        )
    )
    broker = connect(broker_url)
    broker.create_topic(topic_a, 4)  # before any consumer subscribes
    broker.create_topic(topic_b, 2)
    return path, broker, topic_a, topic_b


# Runs ``tidelake run`` with the transactional producer's Nth commit SIGKILLing the process
# right before it commits (after Kafka received the transaction's records: they sit in the
# log, uncommitted) or right after it committed (before the sink or the source heard of it).
CRASHING_RUN = r"""
import os, signal, sys
from tidelake.broker import embedded, kafka
at, when, calls = int(os.environ["TL_CRASH_AT"]), os.environ["TL_CRASH_WHEN"], [0]

def crash_at_commit(cls, send):
    commit = cls.commit
    def crashing(self):
        calls[0] += 1
        if calls[0] == at and when == "before":
            send(self)
            os.kill(os.getpid(), signal.SIGKILL)
        commit(self)
        if calls[0] == at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
    cls.commit = crashing

crash_at_commit(embedded.EmbeddedTransactionalProducer, lambda self: None)
crash_at_commit(kafka.KafkaTransactionalProducer, lambda self: self._p.flush(30))
sys.argv = ["tidelake", "run", sys.argv[1]]
from tidelake.cli import main
main()
"""


def crashing_run(pipeline: Path, at: int, when: str) -> int:
    env = os.environ | {"TL_CRASH_AT": str(at), "TL_CRASH_WHEN": when}
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN, str(pipeline)], env=env, capture_output=True
    )
    return proc.returncode


def assert_killed_mid_stream(seen: list[int]) -> None:
    """Several kills must land mid-stream (on an idle machine a restarted flow can catch up
    fast enough to finish before the last few)."""
    mid = [n for n in seen if n < RECORDS]
    assert len(mid) >= 3, f"only {len(mid)} of {KILLS} kills mid-stream: {seen}"


BROKERS = {
    "embedded": lambda request, tmp: f"embedded:///{tmp}/log.db",
    "kafka": lambda request, tmp: str(request.getfixturevalue("kafka_url")),
}


@pytest.mark.integration
@pytest.mark.parametrize("backend", sorted(BROKERS))
def test_generator_to_topic_killed_10_times(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> None:
    path, broker, topic, _ = setup(tmp_path, BROKERS[backend](request, tmp_path), unique, False)
    reader = TopicReader(broker, topic, f"check_{unique}")
    try:
        seen = killing.kill_repeatedly(
            lambda: killing.start(path), reader.count, RECORDS, KILLS, random.Random(unique)
        )
        assert_killed_mid_stream(seen)
        killing.run_to_exit(lambda: killing.start(path))
        reader.settle()
        check_exactly_once(reader.rows)
    finally:
        reader.close()
        broker.close()


@pytest.mark.integration
@pytest.mark.parametrize("backend", sorted(BROKERS))
def test_chained_topic_flows_killed_10_times(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> None:
    url = BROKERS[backend](request, tmp_path)
    path, broker, _, topic_b = setup(tmp_path, url, unique, True)
    reader = TopicReader(broker, topic_b, f"check_{unique}")
    try:
        seen = killing.kill_repeatedly(
            lambda: killing.start(path), reader.count, RECORDS, KILLS, random.Random(unique)
        )
        assert_killed_mid_stream(seen)
        state_dir = tmp_path / ".tidelake"
        killing.run_to_target(
            lambda: killing.start(path),
            reader.count,
            RECORDS,
            timeout=240,
            ready=killing.flow_running(state_dir, "relay"),
        )
        reader.settle()
        check_exactly_once(reader.rows, doubled=True)
    finally:
        reader.close()
        broker.close()


@pytest.mark.integration
@pytest.mark.parametrize("backend", sorted(BROKERS))
def test_generator_to_topic_killed_at_commit(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> None:
    """SIGKILL exactly around the transaction commit, where an at-least-once sink (records
    flushed, checkpoint not yet stored) would duplicate a batch every time."""
    url = BROKERS[backend](request, tmp_path)
    path, broker, topic, _ = setup(tmp_path, url, unique, False)
    text = path.read_text().replace(", rate: 20000", "").replace("size: 2000", "size: 10000")
    path.write_text(text)  # 20 transactions, as fast as possible
    reader = TopicReader(broker, topic, f"check_{unique}")
    try:
        for at, when in [(3, "before"), (2, "after"), (1, "before"), (4, "after"), (2, "before")]:
            assert crashing_run(path, at, when) == -9, "the process killed itself"
        deadline = time.monotonic() + 60
        while not reader.count() and time.monotonic() < deadline:  # Kafka: joining the group
            time.sleep(0.1)
        assert 0 < reader.settle() < RECORDS
        killing.run_to_exit(lambda: killing.start(path))
        reader.settle()
        check_exactly_once(reader.rows)
    finally:
        reader.close()
        broker.close()


def test_checkpoint_lives_in_the_log_per_transactional_id(tmp_path: Path) -> None:
    """The checkpoint follows the log, not the state dir; ``transactional_id`` scopes it."""
    from tidelake.config import loads
    from tidelake.runtime.runner import FlowRunner

    log = f"embedded:///{tmp_path}/log.db"

    def run(state: str, writer: str | None) -> None:
        extra = f", transactional_id: {writer}" if writer else ""
        text = (
            f"name: scoped\nbroker: {log}\nflows:\n  produce:\n"
            "    source: {type: generator, kind: transactions, limit: 1000}\n"
            f"    sink: {{type: topic, topic: out{extra}}}\n"
        )
        (tmp_path / state).mkdir(exist_ok=True)
        FlowRunner(loads(text, tmp_path / state / "pipeline.yaml"), "produce").run()

    broker = connect(log)
    run("a", None)
    run("b", None)  # another state dir, same log: resumes from the log's checkpoint
    assert broker.end_offsets("out") == {0: 1000}
    run("c", "other")
    assert broker.end_offsets("out") == {0: 2000}
    run("a", "other")
    assert broker.end_offsets("out") == {0: 2000}
