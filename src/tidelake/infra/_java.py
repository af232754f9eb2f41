"""Shared bits for the JVM services: the java binary and a log4j2 config."""

from __future__ import annotations

import os
from pathlib import Path

from tidelake.errors import InfraError
from tidelake.infra._process import require_tool

JVM_FLAGS = [
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-Djava.awt.headless=true",
]


def java() -> str:
    """``$JAVA_HOME/bin/java`` if set, else ``java`` on PATH (Java 17+ is required)."""
    home = os.environ.get("JAVA_HOME")
    if home:
        path = Path(home) / "bin" / "java"
        if not path.is_file():
            raise InfraError(f"JAVA_HOME={home} has no bin/java; fix JAVA_HOME or unset it")
        return str(path)
    return require_tool(
        "java",
        "install a Java 17+ JDK (Debian: apt-get install -y "
        "openjdk-17-jdk-headless) or set JAVA_HOME",
    )


def write_log4j2(path: Path, *, info_loggers: list[str]) -> Path:
    """Write a log4j2 config: WARN by default, INFO for ``info_loggers``, to stdout.

    The daemon's stdout is its ``service.log`` file, so one file holds everything.
    """
    lines = [
        "status = warn",
        "appender.out.type = Console",
        "appender.out.name = OUT",
        "appender.out.layout.type = PatternLayout",
        "appender.out.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = WARN",
        "rootLogger.appenderRef.out.ref = OUT",
    ]
    for i, name in enumerate(info_loggers):
        lines += [f"logger.l{i}.name = {name}", f"logger.l{i}.level = INFO"]
    path.write_text("\n".join(lines) + "\n")
    return path
