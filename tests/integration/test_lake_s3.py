"""The lake on a real S3 server (versitygw on loopback, a fresh bucket per test): the kill -9
exactly-once test and the schema-evolution test with the warehouse at ``s3://bucket/lake``,
and ``tidelake query`` over it. Set TIDELAKE_SKIP_S3=1 to skip."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import test_lake_evolution as evolution
import test_lake_exactly_once as eo

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("TIDELAKE_SKIP_S3") == "1", reason="TIDELAKE_SKIP_S3=1"),
]


def objects(endpoint: str, bucket: str) -> list[str]:
    from pyarrow import fs

    from tidelake.infra import s3

    files = s3.filesystem(endpoint).get_file_info(fs.FileSelector(bucket, recursive=True))
    return [f.path for f in files if f.type == fs.FileType.File]


def cli_query(pipeline: Path, sql: str) -> list[dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "tidelake.cli", "query", str(pipeline), sql, "--format", "json"],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return [orjson.loads(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("broker", sorted(eo.BROKERS))
def test_s3_topic_to_lake_killed(
    broker: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str, s3_lake: dict
) -> None:
    url = eo.BROKERS[broker](request, tmp_path)
    run = eo.make_run(tmp_path, unique, url, s3_lake["url"], 200_000, 20_000, s3_lake["env"])
    seen, _, visible = eo.kill_land_flow(run, 8, random.Random(unique))
    mid = [n for n in seen if n < run.records]
    assert len(mid) >= 4, f"only {len(mid)} of 8 kills mid-stream: {seen}"
    assert len(visible) == run.records
    eo.check_exactly_once(run, visible)

    keys = objects(s3_lake["endpoint"], s3_lake["bucket"])
    assert any(k.endswith(".parquet") for k in keys), "data files are in the bucket"
    assert any(k.endswith(".metadata.json") for k in keys), "table metadata is in the bucket"
    assert not list((tmp_path / "lake").glob("**/*.parquet")), "nothing written locally"

    rows = cli_query(
        run.path,
        f"SELECT count(*) AS n, count(DISTINCT transaction_id) AS ids, "
        f"count(DISTINCT (_partition, _offset)) AS positions FROM {eo.TABLE}",
    )
    assert rows == [{"n": run.records, "ids": run.records, "positions": run.records}]


@pytest.mark.parametrize("broker", ["embedded", "kafka"])
def test_s3_schema_evolution(
    broker: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str, s3_lake: dict
) -> None:
    url = eo.BROKERS[broker](request, tmp_path)
    evolution.run_evolution(tmp_path, unique, url, s3_lake["url"], s3_lake["env"])
    bad = evolution.bad_ids()
    rows = cli_query(
        tmp_path / "pipeline.yaml",
        f"SELECT count(*) AS n, count(coupon) AS coupons, count(meta.v) AS v "
        f"FROM {evolution.TABLE}",
    )
    good = 3 * evolution.PHASE - len(bad)
    assert rows == [{"n": good, "coupons": good - evolution.PHASE, "v": good - evolution.PHASE}]
    assert any(k.endswith(".parquet") for k in objects(s3_lake["endpoint"], s3_lake["bucket"]))
