"""Servers that restart and disks that fill, under running flows: PostgreSQL stopped with
``-m immediate`` and started again, the Kafka broker SIGKILLed and restarted, the lake's disk
filled and freed. Each flow rides through by itself (``retrying``, then ``running``), and the
counts are exact, without a manual restart.

The servers are this module's own (own state dir and ports), never the shared ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from topic_reader import read_to_end

from tidelake import infra
from tidelake.broker import connect
from tidelake.config import loads
from tidelake.lake.query import QueryEngine
from tidelake.runtime.runner import FlowRunner
from tidelake.serve.api import create_app

pytestmark = pytest.mark.integration

RECORDS = 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Path, dict[str, str]]]:
    """Kafka and PostgreSQL of this module only, on free ports."""
    path = Path(tempfile.mkdtemp(prefix="tidelake-restarts-"))
    path.chmod(0o755)  # PostgreSQL runs as `postgres` and must reach its data dir
    with pytest.MonkeyPatch.context() as mp:
        for var in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "POSTGRES_PORT"):
            mp.setenv(f"TIDELAKE_{var}", str(_free_port()))
        try:
            yield path, infra.up(["kafka", "postgres"], state_dir=path)
        finally:
            infra.down(state_dir=path)
            shutil.rmtree(path, ignore_errors=True)


def _kill(state: Path, service: str, sig: signal.Signals) -> None:
    pid = infra.status(state)[service]["pid"]
    os.kill(pid, sig)
    for _ in range(300):
        if infra.status(state)[service]["pid"] is None:
            return
        time.sleep(0.1)
    raise AssertionError(f"{service} did not stop")


def _produce(url: str, topic: str, n: int = RECORDS) -> None:
    broker = connect(url)
    broker.create_topic(topic, 2)
    producer = broker.producer()
    for start in range(0, n, 10_000):
        ids = range(start, start + 10_000)
        producer.produce(topic, [orjson.dumps({"id": i, "v": i % 13}) for i in ids])
    producer.flush()
    producer.close()
    broker.close()


class Running:
    """A flow in a thread; ``until(check)`` waits for a condition while watching its state."""

    def __init__(self, text: str, path: Path, flow: str = "land") -> None:
        self.runner = FlowRunner(loads(text, path), flow, threading.Event())
        self.states: set[str] = set()
        self.error: BaseException | None = None
        self.last_check_error: BaseException | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as e:
            self.error = e

    def until(self, check, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.states.add(self.runner.metrics.state)
            assert self.thread.is_alive(), f"the flow ended: {self.error}"
            try:
                if check():
                    return
            except Exception as e:
                self.last_check_error = e
            time.sleep(0.2)
        raise AssertionError(
            f"timed out; flow state {self.runner.metrics.state} "
            f"({self.runner.metrics.last_error}); last check: {self.last_check_error!r}"
        )

    def stop(self) -> None:
        self.runner.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        assert self.error is None, self.error


def test_a_table_flow_rides_through_a_postgresql_crash_restart(
    stack: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    state, urls = stack
    log = f"embedded:///{tmp_path}/log.db"  # four slashes: an absolute path
    _produce(log, "events")
    text = f"""\
name: pgrestart
broker: {log}
database: {urls["postgres"]}
flows:
  land:
    source: {{type: topic, topic: events}}
    sink: {{type: table, table: pg_events}}
    batch: {{size: 2000, max_latency: 0.2}}
"""

    def count() -> int:
        with psycopg.connect(urls["postgres"], connect_timeout=2) as c:
            return c.execute("SELECT count(*) FROM pg_events").fetchone()[0]  # type: ignore[index]

    flow = Running(text, tmp_path / "p.yaml")
    try:
        flow.until(lambda: count() >= 10_000)
        _kill(state, "postgres", signal.SIGQUIT)  # what pg_ctl stop -m immediate sends
        flow.until(lambda: flow.runner.metrics.state == "retrying", timeout=30)
        with TestClient(create_app(loads(text, tmp_path / "p.yaml"))) as api:
            (shown,) = api.get("/api/flows").json()  # what an operator sees meanwhile
        assert shown["state"] == "retrying"
        assert "PostgreSQL" in shown["last_error"] and "retry" in shown["last_error"]
        infra.up(["postgres"], state_dir=state)
        flow.until(lambda: count() >= RECORDS)
    finally:
        flow.stop()
    with psycopg.connect(urls["postgres"]) as c:
        assert c.execute("SELECT count(*), count(DISTINCT id) FROM pg_events").fetchone() == (
            RECORDS,
            RECORDS,
        )
    assert "retrying" in flow.states and flow.runner.metrics.errors >= 1


def test_lake_and_exactly_once_topic_flows_ride_through_a_kafka_broker_kill(
    stack: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    state, urls = stack
    _produce(urls["kafka"], "source")
    text = f"""\
name: kafkarestart
broker: {urls["kafka"]}
lake: file://{tmp_path}/lake
flows:
  land:
    source: {{type: topic, topic: source}}
    sink: {{type: lake, table: events}}
    batch: {{size: 2000, max_latency: 0.2}}
  copy:
    source: {{type: topic, topic: source}}
    sink: {{type: topic, topic: copied}}
    batch: {{size: 2000, max_latency: 0.2}}
"""
    path = tmp_path / "p.yaml"
    engine = QueryEngine(loads(text, path))

    def lake_count() -> int:
        return int(engine.sql("SELECT count(*) FROM lake.events").column(0)[0].as_py())

    def copied() -> tuple[int, int]:
        broker = connect(urls["kafka"])
        try:
            ids = [r["id"] for r in read_to_end(broker, "copied", wait=1.0)]
        finally:
            broker.close()
        return len(ids), len(set(ids))

    land, copy = Running(text, path, "land"), Running(text, path, "copy")
    try:
        land.until(lambda: lake_count() >= 10_000)
        _kill(state, "kafka", signal.SIGKILL)
        time.sleep(3)
        infra.up(["kafka"], state_dir=state)
        land.until(lambda: lake_count() >= RECORDS, timeout=180)
        copy.until(lambda: copy.runner.metrics.records_out >= RECORDS, timeout=180)
    finally:
        land.stop()
        copy.stop()
    assert [
        c[0].as_py() for c in engine.sql("SELECT count(*), count(DISTINCT id) FROM lake.events")
    ] == [RECORDS, RECORDS]
    assert copied() == (RECORDS, RECORDS)


def test_a_lake_flow_waits_out_a_full_disk(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)], check=True)
    try:
        log = f"embedded:///{tmp_path}/log.db"  # four slashes: an absolute path
        _produce(log, "events")
        text = f"""\
name: diskfull
broker: {log}
lake: file://{disk}/lake
flows:
  land:
    source: {{type: topic, topic: events}}
    sink: {{type: lake, table: events}}
    batch: {{size: 2000, max_latency: 0.2}}
"""
        path = disk / "p.yaml"  # its state (catalog, metrics) on the disk that fills too
        engine = QueryEngine(loads(text, path))

        def count() -> int:
            return int(engine.sql("SELECT count(*) FROM lake.events").column(0)[0].as_py())

        flow = Running(text, path)
        try:
            flow.until(lambda: count() >= 4_000)
            ballast = disk / "ballast"
            fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
            for size in (1 << 20, 4096, 1):  # fill the disk to the last byte
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError:
                    pass
            os.close(fd)
            flow.until(lambda: "disk full" in flow.runner.metrics.last_error, timeout=60)
            assert flow.runner.metrics.state == "retrying"
            ballast.unlink()
            flow.until(lambda: count() >= RECORDS)
        finally:
            flow.stop()
        assert [
            c[0].as_py() for c in engine.sql("SELECT count(*), count(DISTINCT id) FROM lake.events")
        ] == [RECORDS, RECORDS]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_native_cdc_flow_rides_through_a_postgresql_crash_restart(
    stack: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """Changes written before and after the crash all land once in the history table (the
    crash comes after the initial snapshot: one interrupted mid-snapshot is re-read whole,
    see ``sources/cdc/postgres.py``)."""
    state, urls = stack
    with psycopg.connect(urls["postgres"], autocommit=True) as c:
        c.execute("CREATE TABLE items (id INT PRIMARY KEY, v TEXT)")
        c.execute("INSERT INTO items SELECT i, 'v' || i FROM generate_series(0, 4999) i")
    text = f"""\
name: cdcrestart
database: {urls["postgres"]}
flows:
  history:
    source: {{type: cdc, engine: native, tables: [public.items]}}
    transforms: [{{type: unwrap}}]
    sink: {{type: table, table: items_history}}
    batch: {{size: 1000, max_latency: 0.2}}
"""

    def count() -> int:
        with psycopg.connect(urls["postgres"], connect_timeout=2) as c:
            row = c.execute("SELECT count(*), count(DISTINCT id) FROM items_history").fetchone()
        assert row is not None and row[0] == row[1], row
        return int(row[0])

    def insert(first: int, last: int) -> None:
        with psycopg.connect(urls["postgres"], autocommit=True) as c:
            for start in range(first, last, 100):  # many small transactions
                c.execute(
                    "INSERT INTO items SELECT i, 'v' || i FROM generate_series(%s::int, %s::int) i",
                    (start, start + 99),
                )

    flow = Running(text, tmp_path / "p.yaml", "history")
    try:
        flow.until(lambda: count() >= 5000)  # the initial snapshot landed
        insert(5000, 7000)
        flow.until(lambda: count() >= 5500)
        _kill(state, "postgres", signal.SIGQUIT)  # while changes are streaming
        flow.until(lambda: flow.runner.metrics.state == "retrying", timeout=30)
        infra.up(["postgres"], state_dir=state)
        insert(7000, 10_000)
        flow.until(lambda: count() >= 10_000)
        time.sleep(1)
    finally:
        flow.stop()
    assert count() == 10_000
