"""The movies scenario on real infrastructure: the same ``scenarios/movies/pipeline.yaml``
that ``tidelake demo movies`` runs on embedded defaults, switched by environment variables to
Apache Kafka, PostgreSQL (a fresh database), CDC by the native pgoutput engine or by Debezium
on Kafka Connect, and an Iceberg lake on S3 (a fresh bucket on the local S3 server).

Ratings from the demo's ratings API must reach the lake, and the movies loaded from CSV
must reach it through CDC, within a time budget; the lake is read with ``tidelake query``,
as a user would. Every name shared on the servers (replication slot, connector, consumer
groups, topics) is unique per run through ``PIPELINE_NAME`` and ``CDC_TOPIC_PREFIX``.

``TIDELAKE_SKIP_CONNECT=1`` skips the Debezium variant; ``TIDELAKE_SKIP_S3=1`` keeps the lake
on local disk instead of S3.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from real_infra import cli_query, lake_env, parquet_files, release_cdc

from tidelake.sources.cdc.envelope import default_name

pytestmark = pytest.mark.integration

BUDGET = {"native": 120.0, "debezium": 180.0}  # seconds from start to ratings in the lake
MOVIES = 80  # rows of scenarios/movies/movies.csv
SKIP_CONNECT = os.environ.get("TIDELAKE_SKIP_CONNECT") == "1"
SKIP_S3 = os.environ.get("TIDELAKE_SKIP_S3") == "1"


@pytest.fixture(scope="module")
def services() -> dict[str, str]:
    from tidelake import infra

    wanted = ["kafka", "postgres"]
    wanted += [] if SKIP_CONNECT else ["connect"]
    wanted += [] if SKIP_S3 else ["s3"]
    return infra.up(wanted)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "engine",
    [
        "native",
        pytest.param(
            "debezium",
            marks=pytest.mark.skipif(SKIP_CONNECT, reason="TIDELAKE_SKIP_CONNECT=1"),
        ),
    ],
)
def test_movies_scenario_on_kafka_postgres_cdc_and_s3(
    engine: str, services: dict[str, str], postgres_url: str, unique: str, tmp_path: Path
) -> None:
    pipeline = tmp_path / "movies" / "pipeline.yaml"
    name = f"movies_{unique}"
    env = os.environ | {
        "PYTHONUNBUFFERED": "1",
        "TIDELAKE_BROKER": services["kafka"],
        "TIDELAKE_DATABASE": postgres_url,
        "CDC_ENGINE": engine,
        "PIPELINE_NAME": name,
        "CDC_TOPIC_PREFIX": f"m{unique}",
        **lake_env(services, unique, tmp_path, SKIP_S3),
    }
    env.pop("RATINGS_API", None)
    if engine == "debezium":
        env["KAFKA_CONNECT"] = services["connect"]
    slot = default_name(name, "capture")

    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidelake.cli", "demo", "movies", "--no-dashboard",
         "--api-port", str(_free_port()), "--ratings-port", str(_free_port()), 
         "--dir", str(pipeline.parent)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lines: list[str] = []
    flowing = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "ratings flowing into the lake" in line:
                flowing.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        budget = BUDGET[engine]
        while not flowing.wait(0.5):
            assert proc.poll() is None, "the demo exited:\n" + "".join(lines)
            if time.monotonic() - started > budget:
                pytest.fail(f"no ratings in the lake within {budget:.0f} s:\n" + "".join(lines))
        to_lake = time.monotonic() - started
        print(f"{engine}: ratings flowing into the lake after {to_lake:.1f}s")

        rows = cli_query(
            pipeline,
            env,
            "SELECT count(*) AS n, min(rating) >= 0.5 AND max(rating) <= 5 AS valid,"
            ' count(DISTINCT "movieId") > 1 AS movies FROM lake.ratings',
        )
        n, valid, several = rows[0].split(",")
        assert int(n) > 0 and valid == "true" and several == "true", rows
        with psycopg.connect(postgres_url) as pg:
            in_db = pg.execute("SELECT count(*) FROM ratings").fetchone()
        assert in_db is not None and int(n) <= in_db[0], "more ratings in the lake than in the db"
        if not SKIP_S3:
            assert parquet_files(services["s3"], env["TIDELAKE_LAKE"]) > 0

        # the movies table went CSV -> PostgreSQL -> CDC -> Kafka -> lake, and joins the ratings
        deadline = started + budget + 60
        joined: list[str] = []
        while time.monotonic() < deadline:
            joined = cli_query(
                pipeline,
                env,
                'SELECT (SELECT count(*) FROM lake.movies) AS movies, count(m."movieId") AS matched'
                ' FROM lake.ratings r LEFT JOIN lake.movies m USING ("movieId")',
            )
            movies, matched = (int(v) for v in joined[0].split(","))
            if movies == MOVIES and matched > 0:
                break
            time.sleep(2)
        else:
            pytest.fail(f"movies did not reach the lake: {joined}\n" + "".join(lines))
        print(f"{engine}: {n} ratings, {MOVIES} movies in the lake after "
              f"{time.monotonic() - started:.1f}s")  # fmt: skip
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code: int | None = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        reader.join(10)
        release_cdc(engine, services.get("connect"), postgres_url, slot)
    assert code == 0, "".join(lines)
    assert "demo stopped" in "".join(lines)
