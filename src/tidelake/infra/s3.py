"""A real S3-compatible server on loopback: versitygw (built once with ``go install``) serving a
local directory through its posix backend.

Credentials are local development values, from ``$TIDELAKE_S3_ACCESS_KEY`` /
``$TIDELAKE_S3_SECRET_KEY`` (defaults below); the server reads them from its environment, so
they never appear on a command line or in a log.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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

VERSION = "v1.7.0"
MODULE = "github.com/versity/versitygw/cmd/versitygw"
REGION = "us-east-1"
DEFAULT_ACCESS_KEY = "tidelake"
DEFAULT_SECRET_KEY = "tidelake-local-only"  # a dev value for a loopback-only server
READY_TIMEOUT = 30.0


def port() -> int:
    """``$TIDELAKE_S3_PORT`` or 9000."""
    return env_port("TIDELAKE_S3_PORT", 9000)


def credentials() -> tuple[str, str]:
    """(access key, secret key) for the local server."""
    return (
        os.environ.get("TIDELAKE_S3_ACCESS_KEY") or DEFAULT_ACCESS_KEY,
        os.environ.get("TIDELAKE_S3_SECRET_KEY") or DEFAULT_SECRET_KEY,
    )


def binary() -> Path:
    """Path of the cached versitygw executable (may not exist yet)."""
    return cache_root() / f"versitygw-{VERSION}" / "bin" / "versitygw"


def ensure_cached() -> Path:
    """Return the versitygw executable, building it with ``go install`` on first use."""
    exe = binary()
    if exe.is_file():
        return exe
    home = exe.parent.parent
    with dir_lock(home):
        if exe.is_file():
            return exe
        go = require_tool(
            "go", f"install Go 1.24+ to build versitygw (or put a versitygw binary at {exe})"
        )
        say(f"building versitygw {VERSION} with go install (first run only, ~1-2 min)…")
        started = time.monotonic()
        partial = home / "bin.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        run_checked(
            [go, "install", f"{MODULE}@{VERSION}"],
            what="go install versitygw",
            cwd=home,
            env={**os.environ, "GOBIN": str(partial), "GOFLAGS": "-mod=mod"},
        )
        shutil.rmtree(exe.parent, ignore_errors=True)
        partial.rename(exe.parent)
        say(f"versitygw ready ({time.monotonic() - started:.0f}s)")
    return exe


def ready(daemon: Daemon) -> bool:
    """True if the endpoint answers HTTP (any status: auth errors still prove it is up)."""
    base = daemon.info().get("url")
    if not base:
        return False
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=3):  # noqa: S310 - loopback
            return True
    except urllib.error.HTTPError:
        return True


def start(daemon: Daemon) -> str:
    """Serve ``<run_dir>/data`` (buckets are its subdirectories) on 127.0.0.1; return the
    endpoint URL once it answers."""
    exe = ensure_cached()
    p = port()
    if port_open(p):
        raise InfraError(
            f"port {p} is already in use by another process; stop it or set "
            "TIDELAKE_S3_PORT to a free port"
        )
    data, meta = daemon.run_dir / "data", daemon.run_dir / "meta"
    data.mkdir(parents=True, exist_ok=True)
    meta.mkdir(parents=True, exist_ok=True)
    access, secret = credentials()
    env = {**os.environ, "ROOT_ACCESS_KEY_ID": access, "ROOT_SECRET_ACCESS_KEY": secret}
    url = f"http://127.0.0.1:{p}"
    daemon.start(
        [
            str(exe),
            "--port",
            f"127.0.0.1:{p}",
            "--region",
            REGION,
            "--quiet",
            "--health",
            "/health",
            "posix",
            "--sidecar",
            str(meta),
            str(data),
        ],
        env=env,
    )
    daemon.write_info(
        url=url,
        port=p,
        data_dir=str(data),
        region=REGION,
        access_key=access,
        server=f"versitygw {VERSION}",
    )
    daemon.wait_ready(lambda: ready(daemon), timeout=READY_TIMEOUT, what="HTTP health")
    return url


def stop(daemon: Daemon) -> bool:
    """Stop the server (SIGTERM, SIGKILL after 10 s); True if it was running."""
    return daemon.stop(grace=10.0)


def filesystem(endpoint: str | None = None) -> Any:
    """A ``pyarrow.fs.S3FileSystem`` for the local server (path-style, plain http)."""
    from tidelake.s3_settings import S3Settings

    access, secret = credentials()
    settings = S3Settings(REGION, endpoint or f"http://127.0.0.1:{port()}", access, secret)
    return settings.filesystem(allow_bucket_creation=True, allow_bucket_deletion=True)


def create_bucket(name: str, endpoint: str | None = None) -> None:
    """Create bucket ``name`` on the local server; a no-op if it already exists."""
    s3fs = filesystem(endpoint)
    from pyarrow import fs

    if s3fs.get_file_info(name).type == fs.FileType.Directory:
        return
    s3fs.create_dir(name)
