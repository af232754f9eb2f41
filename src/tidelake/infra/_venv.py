"""Virtual environments of outside Python tools (benchmark peers, Airflow), pinned and cached.

``ensure_venv(requirements, venv)`` creates ``venv`` on first use and reinstalls it when the
requirements file changes (a stamp holds the file's hash), so a fresh clone needs no manual
setup and later runs pay nothing. The lock keeps two processes from building one at once.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from tidelake.infra._process import dir_lock, say


def ensure_venv(requirements: Path, venv: Path) -> Path:
    """``venv`` with ``requirements`` installed (``subprocess.CalledProcessError`` if pip fails)."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    stamp = venv / f".installed-{digest}"
    with dir_lock(venv.parent):
        if stamp.is_file():
            return venv
        say(f"creating {venv} from {requirements.name} (first run only)")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "-U", "pip"], check=True)
        subprocess.run([*pip, "-r", str(requirements)], check=True)
        stamp.touch()
    return venv
