"""`tidelake demo movies` reaches "ratings flowing into the lake" within 60 s, the lake answers
queries, and Ctrl-C stops the whole process tree cleanly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scenario_run import interrupt, read_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_demo_movies_flows_into_the_lake_within_60s(tmp_path: Path) -> None:
    folder = tmp_path / "movies"
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    env.pop("RATINGS_API", None)
    ports = [str(_free_port()) for _ in range(2)]
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidelake.cli",
            "demo",
            "movies",
            "--no-dashboard",
            "--api-port",
            ports[0],
            "--ratings-port",
            ports[1],
            "--dir",
            str(folder),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out: list[str] = []
    try:
        out = read_until(proc, "ratings flowing into the lake", 60)
        elapsed = time.monotonic() - started
        assert elapsed < 60

        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tidelake.cli",
                "query",
                str(folder / "pipeline.yaml"),
                "SELECT count(*) AS n, min(rating) >= 0.5 AND max(rating) <= 5 AS valid"
                " FROM lake.ratings",
                "--format",
                "csv",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        n, valid = result.stdout.strip().splitlines()[1].split(",")
        assert int(n) > 0 and valid == "true"
    finally:
        rest = interrupt(proc)
    assert proc.returncode == 0, "".join(out) + rest
    assert "demo stopped" in rest
