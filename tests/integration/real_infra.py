"""Switch a scenario's pipeline file from embedded defaults to real servers, as its header
comments tell users to: a fresh S3 bucket for the lake, ``tidelake query`` as a user runs it,
and the cleanup of what a CDC run leaves on the servers (a Debezium connector and its offsets,
a replication slot)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tidelake.sources.cdc import drop_slot


def lake_env(
    services: dict[str, str], unique: str, tmp_path: Path, skip_s3: bool
) -> dict[str, str]:
    """The environment that puts the scenario's lake in a fresh bucket on the S3 server (or on
    local disk under ``tmp_path`` when ``skip_s3``)."""
    if skip_s3:
        return {"TIDELAKE_LAKE": f"file://{tmp_path / 'lake'}"}
    from tidelake.infra import s3

    bucket = f"lake-{unique}"
    s3.create_bucket(bucket, services["s3"])
    access, secret = s3.credentials()
    return {
        "TIDELAKE_LAKE": f"s3://{bucket}/lake",
        "TIDELAKE_S3_ENDPOINT": services["s3"],
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
    }


def cli_query(pipeline: Path, env: dict[str, str], sql: str) -> list[str]:
    """``tidelake query PIPELINE SQL --format csv`` in ``env``: the data rows (header dropped)."""
    result = subprocess.run(
        [sys.executable, "-m", "tidelake.cli", "query", str(pipeline), sql, "--format", "csv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[1:]


def parquet_files(endpoint: str, lake: str) -> int:
    """Data files under the ``s3://`` lake prefix, listed on the S3 server itself."""
    from pyarrow import fs

    from tidelake.infra import s3

    selector = fs.FileSelector(lake.removeprefix("s3://"), recursive=True)
    infos = s3.filesystem(endpoint).get_file_info(selector)
    return sum(1 for info in infos if info.path.endswith(".parquet"))


def release_cdc(engine: str, connect: str | None, database: str, slot: str) -> None:
    """Delete the run's Debezium connector (with its offsets) and drop its replication slot."""
    if engine == "debezium" and connect:  # stop, forget its offsets (kept past a delete), delete
        connector = f"/connectors/{slot.replace('_', '-')}"
        with httpx.Client(base_url=connect, timeout=30) as http:
            http.put(f"{connector}/stop")
            for _ in range(20):
                if http.delete(f"{connector}/offsets").status_code < 300:
                    break
                time.sleep(0.5)
            http.delete(connector)
    for _ in range(40):  # a connector's task lets go of its slot a moment after the delete
        try:
            drop_slot(database, slot, slot)
            return
        except Exception:
            time.sleep(0.5)
