"""Scenarios and templates shipped inside the package, copied into project folders.

The wheel carries ``tidelake/scenarios/NAME/`` (in a checkout, a link to ``scenarios/``) and
``tidelake/templates/NAME/`` as package data. Nothing ever runs in place: ``tidelake demo``
and ``tidelake init`` copy one into a folder of the user's, where the pipeline keeps its state
(``.tidelake/``), so an installed package stays read-only.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from tidelake.errors import ConfigError

PACKAGE = Path(__file__).resolve().parent
TEMPLATE = "minimal"
_TEMPLATE_NAME = "name: my_pipeline"


def scenarios_dir() -> Path:
    """``$TIDELAKE_SCENARIOS`` if set, else the scenarios shipped with the package."""
    env = os.environ.get("TIDELAKE_SCENARIOS")
    return Path(env) if env else PACKAGE / "scenarios"


def scenario_names() -> list[str]:
    return sorted(p.parent.name for p in scenarios_dir().glob("*/pipeline.yaml"))


def source_folder(name: str, templates: bool = False) -> Path:
    """The shipped folder of scenario ``name`` (or, with ``templates``, of the template)."""
    if templates and name == TEMPLATE:
        return PACKAGE / "templates" / TEMPLATE
    folder = scenarios_dir() / name
    if not (folder / "pipeline.yaml").is_file():
        choices = scenario_names() + ([TEMPLATE] if templates else [])
        raise ConfigError(
            f"no scenario {name!r} in {scenarios_dir()} (choose one of: {', '.join(choices)})"
        )
    return folder


def _copy(src: Path, dest: Path) -> None:
    """Copy the files of ``src`` over ``dest``, leaving ``dest/.tidelake`` (state) alone."""
    shutil.copytree(
        src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".tidelake", "__pycache__")
    )


def demo_folder(name: str, dest: Path | None = None) -> Path:
    """The folder ``tidelake demo NAME`` runs in (default ``./tidelake-demo/NAME``).

    The scenario's files are refreshed from the package on every run; its state folder is
    kept, so a second run resumes where the first stopped. Returns the pipeline file.
    """
    src = source_folder(name)
    dest = (dest or Path.cwd() / "tidelake-demo" / name).resolve()
    _copy(src, dest)
    return dest / "pipeline.yaml"


def init_project(name: str, dest: Path | None = None) -> Path:
    """Copy scenario or template ``name`` into the new folder ``dest`` (default ``./NAME``).

    A folder that exists and is not empty is refused, so nothing of the user's is overwritten.
    The template's pipeline is named after the folder. Returns the pipeline file.
    """
    src = source_folder(name, templates=True)
    dest = (dest or Path.cwd() / name).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(
            f"{dest} already exists and is not empty: choose a new folder "
            f"(tidelake init {name} NEW_DIR)"
        )
    _copy(src, dest)
    pipeline = dest / "pipeline.yaml"
    if name == TEMPLATE:
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", dest.name).lstrip("0123456789_.-") or "pipeline"
        pipeline.write_text(pipeline.read_text().replace(_TEMPLATE_NAME, f"name: {slug}", 1))
    return pipeline
