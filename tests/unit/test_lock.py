"""requirements.lock, which bootstrap and CI install from, pins every dependency pyproject.toml
declares (core and every extra) at a version its bounds allow: a dependency added or bounded
without re-running scripts/lock fails here."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        spec = line.partition(";")[0].strip()
        if "==" in spec and not spec.startswith("#"):
            name, _, version = spec.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_declared_dependency_is_locked_within_its_bounds() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    locked = _locked()
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "tidelake":
            continue
        assert name in locked, f"{req.name} is not in requirements.lock: run scripts/lock"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={locked[name]} outside {req.specifier}: "
            "run scripts/lock"
        )


def test_bootstrap_installs_from_the_lock() -> None:
    assert "-c requirements.lock" in (ROOT / "scripts" / "bootstrap").read_text()
