"""The peers' virtual environments, pinned by ``bench/requirements/<system>.txt``.

``ensure(system)`` creates ``$BENCH_VENVS/<system>`` (default ``~/.cache/tidelake/bench-venvs``)
on first use and reinstalls it when its requirements file changes (``tidelake.infra._venv``),
so ``python -m bench run`` on a fresh clone needs no manual setup.
"""

from __future__ import annotations

from pathlib import Path

from tidelake.infra._venv import ensure_venv

REQUIREMENTS = Path(__file__).resolve().parent / "requirements"


def needs_venv(system: str) -> bool:
    """tidelake's workers run in the repo's own .venv; every peer has its own."""
    return not system.startswith("tidelake")


def ensure(system: str, root: Path) -> Path:
    """The venv of ``system`` under ``root``, created or refreshed from its requirements."""
    reqs = REQUIREMENTS / f"{system}.txt"
    if not reqs.is_file():
        raise SystemExit(f"bench: no pinned requirements for {system!r} ({reqs} is missing)")
    return ensure_venv(reqs, root / system)
