"""Schema on write, end to end: a running topic -> lake flow whose records gain a field
(top level and nested) mid-stream, and later carry a string where a number was, keeps
running. The new columns appear in the Iceberg table (older rows read them as NULL), the
bad records are in the dead-letter topic — read back through the broker — with a reason
naming the column, and every other record landed exactly once."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import killing
import orjson
import pytest

from tidelake.broker import connect
from tidelake.config import Pipeline, load
from tidelake.errors import QueryError
from tidelake.lake import QueryEngine
from tidelake.lake.catalog import load_table

TABLE = "events"
PHASE = 5_000  # records per phase
BAD_EVERY = 97  # in phase 3, every 97th record sends a string where `amount` was a number

PIPELINE = """\
name: evo_{unique}
broker: {broker}
lake: {lake}
flows:
  land:
    source: {{type: topic, topic: {topic}}}
    sink: {{type: lake, table: {table}}}
    batch: {{size: 10000, max_latency: 0.5}}
    dead_letter: {dlq}
"""


def record(i: int) -> dict[str, object]:
    """Phase 1: id, ts, amount, meta{src}. Phase 2 adds `coupon` and `meta.v`. Phase 3 keeps
    them, and every BAD_EVERY-th record has a non-numeric string `amount`."""
    phase = i // PHASE + 1
    rec: dict[str, object] = {
        "id": i,
        "ts": f"2024-05-{1 + i % 3:02d}T{i % 24:02d}:00:00",
        "amount": round(i * 0.25, 2),
        "meta": {"src": f"s{i % 5}"},
    }
    if phase >= 2:
        rec["coupon"] = f"C{i % 11}"
        rec["meta"] = {"src": f"s{i % 5}", "v": phase}
    if phase == 3 and i % BAD_EVERY == 0:
        rec["amount"] = f"n/a-{i}"
    return rec


def bad_ids() -> set[int]:
    return {i for i in range(2 * PHASE, 3 * PHASE) if i % BAD_EVERY == 0}


def produce(broker_url: str, topic: str, ids: range) -> None:
    broker = connect(broker_url)
    try:
        producer = broker.producer()
        producer.produce(topic, [orjson.dumps(record(i)) for i in ids])
        producer.close()
    finally:
        broker.close()


def landed(pipeline: Pipeline) -> int:
    try:
        snapshot = load_table(pipeline, TABLE).current_snapshot()
    except QueryError:
        return 0
    if snapshot is None or snapshot.summary is None:
        return 0
    return int(snapshot.summary.additional_properties.get("total-records", 0))


def wait_for(what: str, ok: Callable[[], bool], proc: killing.Proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert proc.poll() is None, f"flow exited: {killing.stderr_tail(proc)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def read_topic(broker_url: str, topic: str, group: str, n: int, timeout: float = 60) -> list:
    broker = connect(broker_url)
    consumer = broker.consumer(group, [topic])
    out: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            msgs = consumer.poll(n - len(out), 1.0)
            out += [orjson.loads(v) for v in msgs.values if v is not None]
        msgs = consumer.poll(1000, 1.0)  # nothing beyond: each bad record dead-lettered once
        out += [orjson.loads(v) for v in msgs.values if v is not None]
    finally:
        consumer.close()
        broker.close()
    return out


def run_evolution(
    tmp_path: Path, unique: str, broker_url: str, lake: str, env: Mapping[str, str] | None = None
) -> Pipeline:
    topic, dlq_topic = f"evo_in_{unique}", f"evo_dlq_{unique}"
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        PIPELINE.format(
            unique=unique, broker=broker_url, lake=lake, topic=topic, table=TABLE, dlq=dlq_topic
        )
    )
    pipeline = load(path)
    broker = connect(broker_url)
    try:
        broker.create_topic(topic, 2)
    finally:
        broker.close()

    proc = killing.start(path, ["land"], env)
    try:
        bad = bad_ids()
        for phase in range(3):
            produce(broker_url, topic, range(phase * PHASE, (phase + 1) * PHASE))
            expected = (phase + 1) * PHASE - (len(bad) if phase == 2 else 0)

            def arrived(e: int = expected) -> bool:
                return landed(pipeline) >= e

            wait_for(f"phase {phase + 1} to land", arrived, proc)
        time.sleep(1.0)  # anything extra would land now
        assert proc.poll() is None, "the flow keeps running"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, killing.stderr_tail(proc)

    with QueryEngine(pipeline) as engine:
        table = {c.name: c for c in engine.describe(TABLE).info.columns}
        assert {"id", "ts", "amount", "meta", "coupon"} <= set(table), table
        assert "DOUBLE" in table["amount"].type.upper(), table["amount"]

        def one(sql: str) -> tuple[object, ...]:
            result = engine.sql(sql)
            return tuple(c[0].as_py() for c in result.columns)

        n, distinct, lo, hi = one(
            f"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {TABLE}"
        )
        assert (n, distinct, lo, hi) == (
            3 * PHASE - len(bad),
            3 * PHASE - len(bad),
            0,
            3 * PHASE - 1,
        )
        (landed_bad,) = one(
            f"SELECT count(*) FROM {TABLE} WHERE id IN ({', '.join(map(str, sorted(bad)))})"
        )
        assert landed_bad == 0, "records that do not fit are not in the lake"
        # the new column: NULL before it existed, set after
        assert one(f"SELECT count(coupon) FROM {TABLE} WHERE id < {PHASE}") == (0,)
        assert one(f"SELECT count(coupon) FROM {TABLE} WHERE id >= {PHASE}") == (
            2 * PHASE - len(bad),
        )
        assert one(f"SELECT count(*) FROM {TABLE} WHERE coupon = 'C' || CAST(id % 11 AS VARCHAR)")[
            0
        ] == (2 * PHASE - len(bad))
        # the nested field gained mid-stream
        assert one(f"SELECT count(meta.v) FROM {TABLE} WHERE id < {PHASE}") == (0,)
        assert one(f"SELECT count(*) FROM {TABLE} WHERE meta.v = id // {PHASE} + 1") == (
            2 * PHASE - len(bad),
        )
        assert one(f"SELECT count(*) FROM {TABLE} WHERE meta.src = 's' || (id % 5)") == (
            3 * PHASE - len(bad),
        )
        # every good amount landed as the number it was
        (wrong,) = one(f"SELECT count(*) FROM {TABLE} WHERE amount IS DISTINCT FROM id * 0.25")
        assert wrong == 0

    dlq = read_topic(broker_url, dlq_topic, f"evo_dlq_{unique}", len(bad))
    assert sorted(int(d["payload"]["id"]) for d in dlq) == sorted(bad)  # type: ignore[index]
    for d in dlq:
        assert d["flow"] == "land"
        reason = str(d["reason"])
        assert "amount" in reason and ("double" in reason or "number" in reason), reason
        payload = d["payload"]
        assert str(payload["amount"]).startswith("n/a-"), payload  # type: ignore[index]
        assert d["origin"]["topic"] == topic, d  # type: ignore[index]
        assert "_topic" not in payload, payload
    return pipeline


@pytest.mark.integration
def test_evolution_embedded_log(tmp_path: Path, unique: str) -> None:
    run_evolution(tmp_path, unique, f"embedded:///{tmp_path}/log.db", f"file://{tmp_path}/lake")


@pytest.mark.integration
def test_evolution_kafka(tmp_path: Path, unique: str, kafka_url: str) -> None:
    run_evolution(tmp_path, unique, kafka_url, f"file://{tmp_path}/lake")


CRASH_AFTER_COMMIT = """\
import os, sys, threading
from tidelake.config import load
from tidelake.runtime.runner import FlowRunner
from tidelake.sinks.lake import LakeSink

write = LakeSink.write

def write_then_die(self, table, checkpoint):
    write(self, table, checkpoint)
    if self.ctx.metrics.dead_letters:
        os._exit(9)  # killed right after the Iceberg commit, before the runner's DLQ flush

LakeSink.write = write_then_die
FlowRunner(load(sys.argv[1]), "land", threading.Event()).run()
"""


@pytest.mark.integration
def test_sink_rejects_survive_a_crash_right_after_the_commit(
    tmp_path: Path, unique: str, kafka_url: str
) -> None:
    import subprocess
    import sys

    topic, dlq_topic = f"evo_in_{unique}", f"evo_dlq_{unique}"
    broker_url = f"{kafka_url}?linger.ms=3000"  # a legal producer setting: batch for 3 s
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        PIPELINE.format(
            unique=unique,
            broker=broker_url,
            lake=f"file://{tmp_path}/lake",
            topic=topic,
            table=TABLE,
            dlq=dlq_topic,
        )
    )
    pipeline = load(path)
    broker = connect(kafka_url)
    broker.create_topic(topic, 1)
    broker.create_topic(dlq_topic, 1)
    broker.close()
    produce(kafka_url, topic, range(0, 100))  # phase-1 records: create the table
    script = tmp_path / "crash.py"
    script.write_text(CRASH_AFTER_COMMIT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_for("phase 1 to land", lambda: landed(pipeline) >= 100, proc)
    bad = [i for i in range(2 * PHASE, 2 * PHASE + 200) if i % BAD_EVERY == 0]
    produce(kafka_url, topic, range(2 * PHASE, 2 * PHASE + 200))  # phase 3: some bad amounts
    assert proc.wait(60) == 9, killing.stderr_tail(proc)
    assert landed(pipeline) == 100 + 200 - len(bad), "the commit happened before the crash"

    restarted = killing.start(path, ["land"])
    running = killing.flow_running(pipeline.state_dir, "land")
    wait_for("the restarted flow to run", lambda: running(restarted), restarted)
    time.sleep(2)  # nothing is left to re-read: the checkpoint is past the rejected rows
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(30) == 0, killing.stderr_tail(restarted)
    dlq = read_topic(kafka_url, dlq_topic, f"evo_dlq_{unique}", len(bad), timeout=10)
    assert sorted(int(d["payload"]["id"]) for d in dlq) == bad, "rejected rows dead-lettered"
