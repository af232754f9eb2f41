"""`tidelake demo movies` reaches "ratings flowing into the lake" within 60 s (`demo reviews`:
"reviews in the lake"), the lake answers queries, and Ctrl-C stops the whole process tree
cleanly."""

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


LAKE_CHECKS = {
    "movies": (
        "ratings flowing into the lake",
        "SELECT count(*) AS n, min(rating) >= 0.5 AND max(rating) <= 5 AS valid FROM lake.ratings",
    ),
    "reviews": (
        "reviews in the lake",
        "SELECT count(*) AS n, min(rating) >= 1 AND max(rating) <= 5 AS valid FROM lake.reviews",
    ),
}


@pytest.mark.integration
@pytest.mark.parametrize("scenario", LAKE_CHECKS)
def test_demo_flows_into_the_lake_within_60s(tmp_path: Path, scenario: str) -> None:
    folder = tmp_path / scenario
    message, query = LAKE_CHECKS[scenario]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    for var in ("RATINGS_API", "REVIEWS_APP", "ALERTS_WEBHOOK"):
        env.pop(var, None)
    ports = [str(_free_port()) for _ in range(2)]
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidelake.cli",
            "demo",
            scenario,
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
        out = read_until(proc, message, 60)
        elapsed = time.monotonic() - started
        assert elapsed < 60

        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tidelake.cli",
                "query",
                str(folder / "pipeline.yaml"),
                query,
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
