"""Kill -9 a topic -> lake flow twenty times mid-stream while a generator -> topic flow feeds
it; after the last restart the Iceberg table holds exactly the generated records: nothing
lost, nothing duplicated, every topic offset landed once.

A variant also kills the generator -> topic flow. The lake must then hold exactly what a
consumer sees in the topic — every visible record once, every generated id — whether the
topic sink is at-least-once (a re-sent batch is in the topic twice, under new offsets, and
lands twice: the extra rows must be exactly those) or transactional (no record twice).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import killing
import pyarrow as pa
import pytest

from tidelake.broker import connect
from tidelake.config import Pipeline, load
from tidelake.errors import QueryError
from tidelake.lake import QueryEngine
from tidelake.lake.catalog import load_table
from tidelake.sources.generator import generate

SEED = 7
TABLE = "tx"
PARTITIONS = 4

PIPELINE = """\
name: lakeeo_{unique}
broker: {broker}
lake: {lake}
flows:
  produce:
    source: {{type: generator, kind: transactions, seed: {seed}, limit: {records}}}
    sink: {{type: topic, topic: {topic}, partitions: {partitions}}}
    batch: {{size: 100000, max_latency: 1}}
  land:
    source: {{type: topic, topic: {topic}}}
    sink: {{type: lake, table: {table}}}
    batch: {{size: {batch}, max_latency: 1}}
"""


@dataclass
class LakeRun:
    """A pipeline file with a ``produce`` (generator -> topic) and a ``land`` (topic -> lake)
    flow, and what the test process needs to watch it."""

    path: Path
    pipeline: Pipeline
    broker_url: str
    topic: str
    records: int
    env: Mapping[str, str]

    def start(self, *flows: str) -> killing.Proc:
        return killing.start(self.path, flows, self.env)

    def landed(self) -> int:
        """Rows in the lake table, from the current snapshot's summary (no data read)."""
        try:
            snapshot = load_table(self.pipeline, TABLE).current_snapshot()
        except QueryError:
            return 0
        if snapshot is None or snapshot.summary is None:
            return 0
        return int(snapshot.summary.additional_properties.get("total-records", 0))

    def topic_ends(self) -> dict[int, int]:
        broker = connect(self.broker_url)
        try:
            return broker.end_offsets(self.topic)
        finally:
            broker.close()

    def query(self, sql: str) -> list[tuple[object, ...]]:
        with QueryEngine(self.pipeline) as engine:
            result = engine.sql(sql)
        return list(zip(*(c.to_pylist() for c in result.columns), strict=True))


def make_run(
    tmp_path: Path,
    unique: str,
    broker_url: str,
    lake: str,
    records: int,
    batch: int,
    env: Mapping[str, str] | None = None,
) -> LakeRun:
    topic = f"lake_in_{unique}"
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        PIPELINE.format(
            unique=unique,
            broker=broker_url,
            lake=lake,
            seed=SEED,
            records=records,
            topic=topic,
            partitions=PARTITIONS,
            table=TABLE,
            batch=batch,
        )
    )
    broker = connect(broker_url)
    try:
        broker.create_topic(topic, PARTITIONS)  # before any consumer subscribes
    finally:
        broker.close()
    return LakeRun(path, load(path), broker_url, topic, records, dict(env or {}))


def expected_amount_cents(records: int) -> int:
    """sum(round(amount * 100)) over the generated records (exact: integers)."""
    import pyarrow.compute as pc

    total = 0
    for start in range(0, records, 250_000):
        data = generate("transactions", start, min(250_000, records - start), SEED)
        cents = pc.cast(pc.round(pc.multiply(data.column("amount"), 100)), pa.int64())
        total += pc.sum(cents).as_py()
    return total


def wait_produced(producer: killing.Proc, run: LakeRun, timeout: float = 120) -> None:
    try:
        rc = producer.wait(timeout)
    except Exception:
        producer.kill()
        raise
    assert rc == 0, killing.stderr_tail(producer)
    assert sum(run.topic_ends().values()) >= run.records


def check_exactly_once(run: LakeRun, visible: list[tuple[int, int]]) -> None:
    """The lake holds every record a consumer sees in the topic (``visible``: partition and
    offset of each) exactly once, and every generated id. Rows beyond one per id must be
    records the topic itself holds twice (re-sent by an at-least-once producer)."""
    n = run.records
    extra = len(visible) - n
    ((total, ids, positions, lo, hi, cents),) = run.query(
        f"SELECT count(*), count(DISTINCT transaction_id), count(DISTINCT (_partition, _offset)),"
        f" min(transaction_id), max(transaction_id), sum(CAST(round(amount * 100) AS BIGINT))"
        f" FROM {TABLE} WHERE _topic = '{run.topic}'"
    )
    assert (total, ids, positions) == (n + extra, n, n + extra)
    assert (lo, hi) == (f"T{0:012d}", f"T{n - 1:012d}")
    landed = run.query(f"SELECT _partition, _offset FROM {TABLE}")
    assert sorted(landed) == sorted(visible), "the lake holds exactly the topic, once"
    if not extra:
        assert cents == expected_amount_cents(n), "the rows are the generated ones"
    ((copies,),) = run.query(
        f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM {TABLE} GROUP BY"
        " transaction_id)"
    )
    assert copies == extra, "rows beyond one per id are exactly the re-sent records"


def visible_positions(run: LakeRun, idle: float = 3.0, timeout: float = 120) -> list:
    """(partition, offset) of every record a fresh consumer group reads from the topic (what
    ``end_offsets`` cannot tell once producers use transactions: markers and aborted records
    take offsets too)."""
    broker = connect(run.broker_url)
    consumer = broker.consumer(f"check.{run.topic}.{time.monotonic_ns()}", [run.topic])
    out: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = consumer.poll(100_000, 0.5)
            if len(msgs):
                out += zip(msgs.partitions, msgs.offsets, strict=True)
                last = time.monotonic()
            elif out and time.monotonic() - last >= idle:
                break
    finally:
        consumer.close()
        broker.close()
    return out


def kill_land_flow(
    run: LakeRun, kills: int, rng: random.Random, kill_producer: int = 0
) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Run ``produce`` (SIGKILLed ``kill_producer`` times first) and ``land`` concurrently,
    SIGKILL ``land`` ``kills`` times after visible lake progress, then run it to the end.
    Returns the rows landed / records produced seen before each kill of each flow, and the
    positions of the records the topic holds."""
    producer_kills: list[int] = []
    if kill_producer:
        producer_kills = killing.kill_repeatedly(
            lambda: run.start("produce"),
            lambda: sum(run.topic_ends().values()),
            run.records,
            kill_producer,
            rng,
            pause=(0.0, 0.3),
        )
    producer = run.start("produce")
    try:
        seen = killing.kill_repeatedly(
            lambda: run.start("land"),
            run.landed,
            run.records,
            kills,
            rng,
            pause=(0.0, 0.3),
            poll=0.1,
        )
        wait_produced(producer, run)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    visible = visible_positions(run)
    ready = killing.flow_running(run.pipeline.state_dir, "land")
    killing.run_to_target(
        lambda: run.start("land"), run.landed, len(visible), timeout=240, ready=ready
    )
    assert run.landed() == len(visible), f"{run.landed()} rows landed of {len(visible)}"
    return seen, producer_kills, visible


BrokerFactory = Callable[[pytest.FixtureRequest, Path], str]
BROKERS: dict[str, BrokerFactory] = {
    "embedded": lambda request, tmp: f"embedded:///{tmp}/log.db",
    "kafka": lambda request, tmp: str(request.getfixturevalue("kafka_url")),
}


@pytest.mark.integration
@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_topic_to_lake_killed_12_times(
    broker: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> None:
    url = BROKERS[broker](request, tmp_path)
    run = make_run(tmp_path, unique, url, f"file://{tmp_path}/lake", 600_000, 40_000)
    seen, _, visible = kill_land_flow(run, 12, random.Random(unique))
    mid = [n for n in seen if n < run.records]
    assert len(mid) >= 6, f"only {len(mid)} of 12 kills mid-stream: {seen}"
    assert len(visible) == run.records, "the producer was not killed: no record twice"
    check_exactly_once(run, visible)


@pytest.mark.integration
@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_generator_and_lake_flows_both_killed(
    broker: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> None:
    url = BROKERS[broker](request, tmp_path)
    run = make_run(tmp_path, unique, url, f"file://{tmp_path}/lake", 300_000, 50_000)
    _, _, visible = kill_land_flow(run, 6, random.Random(unique), kill_producer=4)
    check_exactly_once(run, visible)
