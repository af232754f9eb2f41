"""Fetch jars from Maven Central once, into a cache directory, with the machine's ``mvn``."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from tidelake.infra._process import dir_lock, require_tool, run_checked, say

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MVN_HINT = "install Maven (Debian: apt-get install -y maven) and a Java 17+ JDK"


_ALONE = (
    "<exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion></exclusions>"
)


def _pom(coords: Sequence[str], alone: Sequence[str] = ()) -> str:
    deps = []
    for coord in [*coords, *alone]:
        group, artifact, version = coord.split(":")
        deps.append(
            f"    <dependency><groupId>{escape(group)}</groupId>"
            f"<artifactId>{escape(artifact)}</artifactId>"
            f"<version>{escape(version)}</version>"
            f"{_ALONE if coord in alone else ''}</dependency>"
        )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>tidelake.local</groupId><artifactId>tools</artifactId>"
        "<version>1</version>\n  <packaging>pom</packaging>\n  <dependencies>\n"
        + "\n".join(deps)
        + "\n  </dependencies>\n</project>\n"
    )


def copy_dependencies(
    dest: Path, coords: Sequence[str], *, what: str, alone: Sequence[str] = ()
) -> Path:
    """Return ``dest/lib`` holding ``coords`` and their runtime deps, downloading on first use
    (``alone``: jars fetched without their dependencies).

    The directory appears atomically: it exists only once complete.
    """
    lib = dest / "lib"
    if lib.is_dir():
        return lib
    with dir_lock(dest):
        if lib.is_dir():
            return lib
        mvn = require_tool("mvn", MVN_HINT)
        say(f"resolving {what} jars from Maven Central into {lib} (first run only)…")
        started = time.monotonic()
        (dest / "pom.xml").write_text(_pom(coords, alone))
        partial = dest / "lib.partial"
        shutil.rmtree(partial, ignore_errors=True)
        run_checked(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(dest / "pom.xml"),
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={partial}",
            ],
            what=f"mvn resolving {what}",
            cwd=dest,
        )
        partial.rename(lib)
        say(f"{what} jars ready ({time.monotonic() - started:.0f}s)")
        return lib


def unpack(dest: Path, artifact: str, *, what: str) -> Path:
    """Return ``dest`` holding the unpacked archive ``g:a:v:type:classifier``; fetch once."""
    marker = dest / ".complete"
    if marker.exists():
        return dest
    with dir_lock(dest.parent):
        if marker.exists():
            return dest
        mvn = require_tool("mvn", MVN_HINT)
        say(f"fetching {what} from Maven Central into {dest} (first run only)…")
        partial = dest.with_name(dest.name + ".partial")
        scratch = dest.with_name(dest.name + ".mvn")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        group, art, version, kind, classifier = artifact.split(":")
        run_checked(
            [
                mvn,
                "-B",
                "-q",
                f"{DEPENDENCY_PLUGIN}:unpack",
                f"-Dartifact={group}:{art}:{version}:{kind}:{classifier}",
                f"-DoutputDirectory={partial}",
            ],
            what=f"mvn fetching {what}",
            cwd=scratch,
        )  # the plugin leaves marker files under the project dir
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)
        marker.touch()
        return dest
