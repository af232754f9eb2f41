"""tidelake.infra against real services: Kafka, PostgreSQL, Kafka Connect + Debezium, S3.

Each test module run uses its own state dir and free ports, so it never touches a stack a
developer has running. First run downloads/builds into the shared cache (minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidelake import infra

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline and _alive(int(proc.name)):
                pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def ports() -> Iterator[None]:
    """Free ports for every service, exported through the TIDELAKE_*_PORT variables."""
    with pytest.MonkeyPatch.context() as mp:
        for var in (
            "KAFKA_PORT",
            "KAFKA_CONTROLLER_PORT",
            "POSTGRES_PORT",
            "CONNECT_PORT",
            "S3_PORT",
        ):
            mp.setenv(f"TIDELAKE_{var}", str(_free_port()))
        yield


def _state_dir() -> Path:
    """A world-traversable temp dir: when tests run as root, PostgreSQL runs as `postgres` and
    must reach its data dir (pytest's own tmp dirs are private to the test user)."""
    path = Path(tempfile.mkdtemp(prefix="tidelake-infra-test-"))
    path.chmod(0o755)
    return path


@pytest.fixture
def state() -> Iterator[Path]:
    path = _state_dir()
    try:
        yield path
    finally:
        infra.down(state_dir=path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(ports: None) -> Iterator[tuple[Path, dict]]:
    path = _state_dir()
    try:
        yield path, infra.up(["kafka", "postgres"], state_dir=path)
    finally:
        infra.down(state_dir=path)
        shutil.rmtree(path, ignore_errors=True)


def test_up_returns_urls_and_second_up_is_a_fast_noop(stack: tuple[Path, dict]) -> None:
    state, urls = stack
    assert urls["kafka"] == f"kafka://127.0.0.1:{os.environ['TIDELAKE_KAFKA_PORT']}"
    assert urls["postgres"] == (
        f"postgresql://postgres@127.0.0.1:{os.environ['TIDELAKE_POSTGRES_PORT']}/tidelake"
    )
    pids = {name: s["pid"] for name, s in infra.status(state).items() if s["running"]}
    started = time.monotonic()
    assert infra.up(["postgres", "kafka"], state_dir=state) == urls
    assert time.monotonic() - started < 3.0
    assert {n: s["pid"] for n, s in infra.status(state).items() if s["running"]} == pids


def test_kafka_produce_and_consume(stack: tuple[Path, dict]) -> None:
    from confluent_kafka import Consumer, Producer

    bootstrap = stack[1]["kafka"].removeprefix("kafka://")
    topic = f"infra-test-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"k", value=b"hello tidelake")
    assert producer.flush(30) == 0
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "infra-test", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 30
        msg = None
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                break
        assert msg is not None and msg.error() is None
        assert (msg.key(), msg.value()) == (b"k", b"hello tidelake")
    finally:
        consumer.close()


def test_postgres_select_and_logical_slot(stack: tuple[Path, dict]) -> None:
    import psycopg

    with psycopg.connect(stack[1]["postgres"], autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        slot = conn.execute(
            "SELECT slot_name FROM pg_create_logical_replication_slot('infra_test', 'pgoutput')"
        ).fetchone()
        assert slot == ("infra_test",)
        conn.execute("SELECT pg_drop_replication_slot('infra_test')")


def test_status_reports_running_services(stack: tuple[Path, dict]) -> None:
    state, urls = stack
    st = infra.status(state)
    assert set(st) == set(infra.SERVICES)
    for name in ("kafka", "postgres"):
        assert st[name]["running"] and st[name]["pid"] and st[name]["url"] == urls[name]
        assert Path(st[name]["log"]).is_file()
    assert not st["connect"]["running"] and not st["s3"]["running"]


def test_down_stops_everything(stack: tuple[Path, dict]) -> None:
    state, _ = stack
    pids = [s["pid"] for s in infra.status(state).values() if s["running"]]
    assert sorted(infra.down(state_dir=state)) == ["kafka", "postgres"]
    assert not any(s["running"] for s in infra.status(state).values())
    assert not any(_alive(pid) for pid in pids)
    assert _processes_mentioning(str(state)) == []
    assert infra.down(state_dir=state) == []


@pytest.mark.skipif(
    os.environ.get("TIDELAKE_SKIP_CONNECT") == "1", reason="TIDELAKE_SKIP_CONNECT=1"
)
def test_connect_lists_debezium_postgres_and_mysql(ports: None, state: Path) -> None:
    try:
        urls = infra.up(["connect"], state_dir=state)
        assert set(urls) == {"kafka", "connect"}
        with urllib.request.urlopen(f"{urls['connect']}/connector-plugins", timeout=10) as r:
            classes = {p["class"] for p in json.loads(r.read())}
        assert "io.debezium.connector.postgresql.PostgresConnector" in classes
        assert "io.debezium.connector.mysql.MySqlConnector" in classes
    finally:
        assert sorted(infra.down(state_dir=state)) == ["connect", "kafka"]
    assert _processes_mentioning(str(state)) == []


@pytest.mark.skipif(os.environ.get("TIDELAKE_SKIP_S3") == "1", reason="TIDELAKE_SKIP_S3=1")
def test_s3_bucket_put_get(ports: None, state: Path) -> None:
    from tidelake.infra import s3

    try:
        url = infra.up(["s3"], state_dir=state)["s3"]
        s3.create_bucket("infra-test", url)
        s3.create_bucket("infra-test", url)  # idempotent
        fs = s3.filesystem(url)
        with fs.open_output_stream("infra-test/dir/hello.txt") as out:
            out.write(b"hello s3")
        with fs.open_input_stream("infra-test/dir/hello.txt") as inp:
            assert inp.read() == b"hello s3"
    finally:
        assert infra.down(["s3"], state_dir=state) == ["s3"]
