"""Kill -9 a topic -> sql/pseudonymize -> table flow ten times mid-stream; after the last
restart the table holds exactly the input: nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
from pathlib import Path

import killing
import orjson
import pytest

from tidelake.broker import connect
from tidelake.db import connect_db

RECORDS = 200_000
KILLS = 10

PIPELINE = """\
name: eo
broker: {broker}
database: {database}
flows:
  land:
    source: {{type: topic, topic: {topic}}}
    transforms:
      - {{type: pseudonymize, fields: [email]}}
      - {{type: sql, query: "SELECT *, amount * 2 AS doubled FROM batch WHERE id >= 0"}}
    sink: {{type: table, table: {table}}}
    batch: {{size: 5000, max_latency: 0.3}}
"""


def _produce(broker_url: str, topic: str) -> None:
    broker = connect(broker_url)
    broker.create_topic(topic, 4)
    producer = broker.producer()
    step = 20_000
    for start in range(0, RECORDS, step):
        ids = range(start, start + step)
        producer.produce(
            topic,
            [orjson.dumps({"id": i, "email": f"u{i}@example.org", "amount": i % 97}) for i in ids],
            [str(i).encode() for i in ids],
        )
    producer.flush()
    producer.close()
    broker.close()


def _count(database: str, table: str) -> int:
    if database.startswith("sqlite:///"):
        path = database.removeprefix("sqlite:///")
        if not os.path.exists(path):
            return 0
        with sqlite3.connect(path, timeout=30) as c:
            try:
                return int(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            except sqlite3.OperationalError:
                return 0
    db = connect_db(database)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}")[0][0]) if db.columns(table) else 0
    finally:
        db.close()


def _start(pipeline: Path) -> subprocess.Popen[bytes]:
    return killing.start(pipeline, env={"TIDELAKE_PSEUDONYMIZE_KEY": "test-key-not-secret"})


def kill_and_restart(broker_url: str, database: str, tmp_path: Path, unique: str) -> None:
    topic, table = f"in_{unique}", f"out_{unique}"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        PIPELINE.format(broker=broker_url, database=database, topic=topic, table=table)
    )
    _produce(broker_url, topic)
    rng = random.Random(unique)
    killing.kill_repeatedly(
        lambda: _start(pipeline), lambda: _count(database, table), RECORDS, KILLS, rng
    )
    killing.run_to_target(lambda: _start(pipeline), lambda: _count(database, table), RECORDS)

    db = connect_db(database)
    try:
        total, ids, positions, lo, hi = db.execute(
            f"SELECT count(*), count(DISTINCT id), count(DISTINCT _partition * 10000000 + _offset),"
            f" min(id), max(id) FROM {table}"
        )[0]
        doubled_ok = db.execute(f"SELECT count(*) FROM {table} WHERE doubled = amount * 2")[0][0]
        plain = db.execute(f"SELECT count(*) FROM {table} WHERE email LIKE '%@example.org'")[0][0]
    finally:
        db.close()
    assert (total, ids, positions, lo, hi) == (RECORDS, RECORDS, RECORDS, 0, RECORDS - 1)
    assert doubled_ok == RECORDS
    assert plain == 0, "e-mails must be pseudonymized"


@pytest.mark.integration
def test_embedded_log_into_sqlite(tmp_path: Path, unique: str) -> None:
    kill_and_restart(
        f"embedded:///{tmp_path}/log.db", f"sqlite:///{tmp_path}/out.db", tmp_path, unique
    )


@pytest.mark.integration
def test_embedded_log_into_postgres(tmp_path: Path, unique: str, postgres_url: str) -> None:
    kill_and_restart(f"embedded:///{tmp_path}/log.db", postgres_url, tmp_path, unique)


@pytest.mark.integration
def test_kafka_into_sqlite(tmp_path: Path, unique: str, kafka_url: str) -> None:
    kill_and_restart(kafka_url, f"sqlite:///{tmp_path}/out.db", tmp_path, unique)


@pytest.mark.integration
def test_kafka_into_postgres(
    tmp_path: Path, unique: str, kafka_url: str, postgres_url: str
) -> None:
    kill_and_restart(kafka_url, postgres_url, tmp_path, unique)
