"""The peers' virtual environments, pinned by ``bench/requirements/<system>.txt``.

``ensure(system)`` creates ``$BENCH_VENVS/<system>`` (default ``~/.cache/tidelake/bench-venvs``)
on first use and reinstalls it when its requirements file changes (a stamp holds the file's
hash), so ``python -m bench run`` on a fresh clone needs no manual setup.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "requirements"


def needs_venv(system: str) -> bool:
    """tidelake's workers run in the repo's own .venv; every peer has its own."""
    return not system.startswith("tidelake")


def ensure(system: str, root: Path) -> Path:
    """The venv of ``system`` under ``root``, created or refreshed from its requirements."""
    reqs = REQUIREMENTS / f"{system}.txt"
    if not reqs.is_file():
        raise SystemExit(f"bench: no pinned requirements for {system!r} ({reqs} is missing)")
    venv = root / system
    digest = hashlib.sha256(reqs.read_bytes()).hexdigest()[:16]
    stamp = venv / f".installed-{digest}"
    if stamp.is_file():
        return venv
    print(f"bench: creating the {system} venv in {venv} (first run only)", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-U", "pip"], check=True)
    subprocess.run([*pip, "-r", str(reqs)], check=True)
    stamp.touch()
    return venv
