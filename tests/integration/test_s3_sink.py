"""``s3`` sink against a real S3 server (versitygw through ``tidelake.infra``).

A topic with three partitions is landed as JSON objects; every record must be in exactly
one object, objects named by their offsets, and the checkpoint object beside them —
also when the flow is killed with SIGKILL mid-stream and restarted.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.fs as pafs
import pytest

from tidelake.broker.embedded import EmbeddedBroker
from tidelake.config import loads
from tidelake.runtime.runner import FlowRunner
from tidelake.sinks.s3 import s3_filesystem

pytestmark = pytest.mark.integration

PIPELINE = """\
name: s3it
broker: embedded
flows:
  raw:
    source: {{type: topic, topic: events}}
    sink: {{type: s3, path: "s3://{bucket}/{prefix}", format: {format}}}
    batch: {{size: 700, max_latency: 0.2}}
"""
NAME = re.compile(r"^events/partition=(\d)/(\d{10})-(\d{10})\.(jsonl|json)$")


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    from tidelake import infra
    from tidelake.infra import s3

    endpoint = infra.up(["s3"])["s3"]
    access, secret = s3.credentials()
    env = {
        "TIDELAKE_S3_ENDPOINT": endpoint,
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def bucket(s3_env: dict[str, str], unique: str) -> str:
    from tidelake.infra import s3

    name = f"raw-{unique}"
    s3.create_bucket(name, s3_env["TIDELAKE_S3_ENDPOINT"])
    return name


def produce(path: Path, start: int, stop: int) -> None:
    broker = EmbeddedBroker(str(path / ".tidelake" / "log.db"))
    broker.create_topic("events", 3)
    prod = broker.producer()
    ids = range(start, stop)
    prod.produce(
        "events",
        [orjson.dumps({"id": i, "name": f"user{i}", "score": i / 4}) for i in ids],
        [str(i).encode() for i in ids],
    )
    prod.close()
    broker.close()


def read_object(fs: pafs.S3FileSystem, path: str) -> bytes | None:
    """An object's body, None when it went away after the listing (a restarted flow deletes
    what a killed write left past the checkpoint). The flow overwrites its checkpoint object
    while we poll it, and the server may then answer one GET with the old checksum and the
    new body: read again."""
    for attempt in range(5):
        try:
            with fs.open_input_stream(path) as f:
                return bytes(f.read())
        except FileNotFoundError:
            return None
        except OSError as e:
            if "checksums mismatch" not in str(e) or attempt == 4:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def landed(env: dict[str, str], root: str) -> tuple[dict[str, list[dict[str, Any]]], Any]:
    """(data objects by name relative to ``root`` -> records, the flow's checkpoint object)."""
    fs = s3_filesystem(env)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    objects, checkpoint = {}, {}
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        body = read_object(fs, info.path)
        if body is None:
            continue
        rel = info.path[len(root) + 1 :]
        if rel.startswith("_checkpoints/"):
            checkpoint = orjson.loads(body)
        elif rel.endswith(".json"):
            objects[rel] = orjson.loads(body)
        else:
            objects[rel] = [orjson.loads(line) for line in body.splitlines()]
    return objects, checkpoint


def check_exactly_once(objects: dict[str, list[dict[str, Any]]], n: int) -> None:
    counts = Counter(r["id"] for records in objects.values() for r in records)
    assert sorted(counts) == list(range(n)), f"missing: {set(range(n)) - set(counts)}"
    assert max(counts.values()) == 1, [i for i, c in counts.items() if c > 1][:10]
    spans: dict[str, list[tuple[int, int]]] = {}
    for name, records in objects.items():
        m = NAME.match(name)
        assert m, name
        first, last = int(m.group(2)), int(m.group(3))
        assert last - first + 1 == len(records), name
        spans.setdefault(m.group(1), []).append((first, last))
    for partition, ranges in spans.items():
        ranges.sort()
        assert ranges[0][0] == 0, partition
        for (_, a), (b, _) in zip(ranges, ranges[1:], strict=False):
            assert b == a + 1, f"partition {partition}: gap or overlap at {a}..{b}"


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_lands_a_topic_as_objects_exactly_once(
    tmp_path: Path, s3_env: dict[str, str], bucket: str, fmt: str
) -> None:
    produce(tmp_path, 0, 5000)
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.format(bucket=bucket, prefix="raw/v1", format=fmt))

    def run_until(n: int) -> None:
        stop = threading.Event()
        runner = FlowRunner(loads(path.read_text(), path), "raw", stop)
        thread = threading.Thread(target=runner.run)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and thread.is_alive():
                _, checkpoint = landed(s3_env, f"{bucket}/raw/v1")
                if sum(checkpoint.get("positions", {}).values()) >= n:
                    break
                time.sleep(0.3)
        finally:
            stop.set()
            thread.join(30)
        assert runner.metrics.errors == 0, runner.metrics.last_error

    run_until(5000)
    produce(tmp_path, 5000, 8000)
    run_until(8000)  # a new process resumes from the checkpoint object
    objects, checkpoint = landed(s3_env, f"{bucket}/raw/v1")
    check_exactly_once(objects, 8000)
    assert sum(checkpoint["positions"].values()) == 8000
    assert len({n.split("/")[1] for n in objects}) == 3, "one folder per partition"
    record = next(iter(objects.values()))[0]
    assert set(record) == {"id", "name", "score"}, "provenance left out by default"


def test_survives_kill_9(tmp_path: Path, s3_env: dict[str, str], bucket: str) -> None:
    total = 12_000
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.format(bucket=bucket, prefix="raw/k9", format="jsonl"))
    produce(tmp_path, 0, 1000)

    def writer() -> None:
        for start in range(1000, total, 500):
            produce(tmp_path, start, start + 500)
            time.sleep(0.3)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "tidelake.cli", "run", str(path)],
            cwd=tmp_path,
            env={**os.environ, **s3_env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    rng = random.Random(11)
    thread = threading.Thread(target=writer)
    proc = start()
    try:
        time.sleep(2.0)
        thread.start()
        for _ in range(4):
            time.sleep(rng.uniform(0.7, 2.0))
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc = start()
        thread.join()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            _, checkpoint = landed(s3_env, f"{bucket}/raw/k9")
            if sum(checkpoint.get("positions", {}).values()) >= total:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    objects, checkpoint = landed(s3_env, f"{bucket}/raw/k9")
    assert sum(checkpoint["positions"].values()) == total
    check_exactly_once(objects, total)
