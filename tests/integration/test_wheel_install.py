"""The built wheel, installed into a fresh virtualenv outside the checkout: the core alone names
the extra a connector needs; with the lake and serve extras, ``tidelake demo movies`` runs from
an empty folder until ratings reach the lake, keeping its state out of site-packages."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from scenario_run import interrupt, read_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

LAKE_PIPELINE = """\
name: needs_lake
flows:
  land:
    source: {type: generator, kind: movie_ratings, limit: 10}
    sink: {type: lake, table: ratings}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pip(venv: Path, *args: str) -> None:
    """pip of this interpreter installing into ``venv`` (its cache is warm)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
         "--disable-pip-version-check", "-c", str(ROOT / "requirements.lock"), *args],
        check=True,
        timeout=600,
    )  # fmt: skip


def _tidelake(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "tidelake"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(venv),
    )


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.pop("TIDELAKE_SCENARIOS", None)
    env.pop("RATINGS_API", None)
    path = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return env | {"PATH": path, "PYTHONUNBUFFERED": "1", "COLUMNS": "500"}


def test_wheel_installs_core_then_extras_and_runs_the_movies_demo(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
         "-w", str(dist), str(ROOT)],
        check=True,
        timeout=600,
    )  # fmt: skip
    (wheel,) = dist.glob("tidelake-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    work = tmp_path / "work"
    work.mkdir()

    _pip(venv, str(wheel))
    (work / "lake.yaml").write_text(LAKE_PIPELINE)
    missing = _tidelake(venv, work, "validate", "lake.yaml")
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "pip install 'tidelake[lake]'" in " ".join(missing.stderr.split())
    made = _tidelake(venv, work, "init", "minimal", "shop")
    assert made.returncode == 0, made.stderr
    assert _tidelake(venv, work, "validate", "shop/pipeline.yaml").returncode == 0

    _pip(venv, f"{wheel}[lake,serve]")
    demo = work / "empty"
    demo.mkdir()
    proc = subprocess.Popen(
        [str(venv / "bin" / "tidelake"), "demo", "movies", "--no-dashboard",
         "--api-port", str(_free_port()), "--ratings-port", str(_free_port())],
        cwd=demo,
        env=_env(venv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    out: list[str] = []
    try:
        out = read_until(proc, "ratings flowing into the lake", 90)
    finally:
        rest = interrupt(proc)
    state = demo / "tidelake-demo" / "movies" / ".tidelake"
    assert f"state        {state}" in "".join(out)
    assert (state / "lake").is_dir()
    assert proc.returncode == 0, "".join(out) + rest
    installed = next(venv.glob("lib/python*/site-packages/tidelake/scenarios/movies"))
    assert (installed / "pipeline.yaml").is_file()
    assert not (installed / ".tidelake").exists()
