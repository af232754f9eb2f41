"""A MongoDB-wire-compatible server on loopback: FerretDB v1 on its SQLite backend, built once
from its Go module source (MongoDB itself is not packaged here).

FerretDB on SQLite has no multi-document transactions and no change streams; the ``mongodb``
sink therefore never depends on them (see ``tidelake.sinks.mongodb``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

from tidelake.errors import InfraError
from tidelake.infra._process import (
    Daemon,
    cache_root,
    dir_lock,
    env_port,
    port_open,
    require_tool,
    run_checked,
    say,
)

VERSION = "v1.24.2"
MODULE = "github.com/FerretDB/FerretDB"
READY_TIMEOUT = 30.0


def port() -> int:
    """``$TIDELAKE_MONGODB_PORT`` or 27017."""
    return env_port("TIDELAKE_MONGODB_PORT", 27017)


def binary() -> Path:
    """Path of the cached ferretdb executable (may not exist yet)."""
    return cache_root() / f"ferretdb-{VERSION}" / "ferretdb"


def ensure_cached() -> Path:
    """Return the ferretdb executable, building it from the module source on first use.

    ``go install`` of the command builds a binary that panics on start (its embedded version
    file is only written by FerretDB's own build), so the source is copied and the file written.
    """
    exe = binary()
    if exe.is_file():
        return exe
    home = exe.parent
    with dir_lock(home):
        if exe.is_file():
            return exe
        go = require_tool("go", f"install Go 1.22+ to build FerretDB (or put a binary at {exe})")
        say(f"building FerretDB {VERSION} from its module source (first run only, ~2-4 min)…")
        started = time.monotonic()
        env = {**os.environ, "GOFLAGS": "-mod=mod"}
        info = json.loads(
            run_checked(
                [go, "mod", "download", "-json", f"{MODULE}@{VERSION}"],
                what="go mod download FerretDB",
                env=env,
            )
        )
        src = home / "src"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(info["Dir"], src)
        for path in [src, *src.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        (src / "build" / "version" / "version.txt").write_text(VERSION + "\n")
        partial = home / "ferretdb.partial"
        run_checked(
            [go, "build", "-o", str(partial), "./cmd/ferretdb"],
            what="go build FerretDB",
            cwd=src,
            env=env,
        )
        partial.rename(exe)
        shutil.rmtree(src, ignore_errors=True)
        say(f"FerretDB ready ({time.monotonic() - started:.0f}s)")
    return exe


def ready(daemon: Daemon) -> bool:
    """True once the server answers ``ping``."""
    base = daemon.info().get("url")
    if not base or not port_open(int(daemon.info()["port"])):
        return False
    import pymongo

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        base, serverSelectionTimeoutMS=2000
    )
    try:
        return bool(client.admin.command("ping").get("ok"))
    finally:
        client.close()


def start(daemon: Daemon) -> str:
    """Serve databases as SQLite files under ``<run_dir>/data``; return the mongodb:// URL."""
    exe = ensure_cached()
    p = port()
    debug = env_port("TIDELAKE_MONGODB_DEBUG_PORT", p + 1000)
    for q, var in ((p, "TIDELAKE_MONGODB_PORT"), (debug, "TIDELAKE_MONGODB_DEBUG_PORT")):
        if port_open(q):
            raise InfraError(
                f"port {q} is already in use by another process; "
                f"stop it or set {var} to a free port"
            )
    data = daemon.run_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    daemon.start(
        [
            str(exe),
            "--handler=sqlite",
            f"--sqlite-url=file:{data}/",
            f"--listen-addr=127.0.0.1:{p}",
            f"--debug-addr=127.0.0.1:{debug}",
            f"--state-dir={daemon.run_dir}",
            "--telemetry=disable",
            "--log-level=warn",
        ]
    )
    url = f"mongodb://127.0.0.1:{p}/"
    daemon.write_info(url=url, port=p, data_dir=str(data), server=f"FerretDB {VERSION} (sqlite)")
    daemon.wait_ready(lambda: ready(daemon), timeout=READY_TIMEOUT, what="ping")
    return url


def stop(daemon: Daemon) -> bool:
    """SIGTERM, SIGKILL after 10 s; True if it was running."""
    return daemon.stop(grace=10.0)
