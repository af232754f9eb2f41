"""PostgreSQL 15 (Debian's package) with ``wal_level=logical``, a private cluster on loopback."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from tidelake.errors import InfraError
from tidelake.infra._process import (
    Daemon,
    as_user,
    env_port,
    port_open,
    run_checked,
    say,
)

MAJOR = 15
BIN = Path(f"/usr/lib/postgresql/{MAJOR}/bin")
DATABASE = "tidelake"
READY_TIMEOUT = 60.0
#: Fallback home for clusters when running as root and the state dir is private (e.g. /root).
ROOT_FALLBACK = Path("/var/lib/postgresql/tidelake")


def port() -> int:
    """``$TIDELAKE_POSTGRES_PORT`` or 5433 (5432 is left to a system cluster)."""
    return env_port("TIDELAKE_POSTGRES_PORT", 5433)


def ensure_installed() -> Path:
    """Return PostgreSQL 15's bin dir, installing Debian's ``postgresql`` package if missing
    (needs root)."""
    if (BIN / "postgres").is_file():
        return BIN
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise InfraError(
            f"PostgreSQL {MAJOR} not found in {BIN}; install it "
            "(Debian/Ubuntu: sudo apt-get install -y postgresql)"
        )
    say("installing PostgreSQL with apt-get (first run only)…")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run_checked(["apt-get", "update"], what="apt-get update", env=env)
    run_checked(
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
        what="apt-get install postgresql",
        env=env,
    )
    if not (BIN / "postgres").is_file():
        raise InfraError(
            f"apt installed a PostgreSQL without {BIN}/postgres; this release "
            f"needs PostgreSQL {MAJOR}"
        )
    return BIN


ensure_cached = ensure_installed


def _os_user() -> str | None:
    """Run the server as ``postgres`` when we are root (it refuses root), else as ourselves."""
    return "postgres" if os.geteuid() == 0 else None


def _cluster_home(run_dir: Path) -> Path:
    """Directory holding ``data/`` and ``socket/``: the run dir if the server's OS user can reach
    it, else (root with a private home) a per-state-dir folder under /var/lib/postgresql."""
    user = _os_user()
    if user is None:
        return run_dir
    probe = subprocess.run(["test", "-x", str(run_dir)], **as_user(user))
    if probe.returncode == 0:
        return run_dir
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]
    return ROOT_FALLBACK / digest


def _prepare(run_dir: Path) -> tuple[Path, Path]:
    """Create (once) the cluster; return (data dir, socket dir), owned by the server's user."""
    home = _cluster_home(run_dir)
    data, sock = home / "data", home / "socket"
    user = _os_user()
    if home != run_dir:  # keep the cluster discoverable from the state dir
        link = run_dir / "cluster"
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(home)
    if not (data / "PG_VERSION").is_file():
        shutil.rmtree(data, ignore_errors=True)
    for d in (data, sock):
        d.mkdir(parents=True, exist_ok=True)
        if user is not None:
            shutil.chown(d, user, user)
    data.chmod(0o700)
    if not (data / "PG_VERSION").is_file():
        say(f"initializing a PostgreSQL cluster in {data}…")
        run_checked(
            [
                str(BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            what="initdb",
            user=user,
            cwd=data,
        )
    return data, sock


def url(p: int) -> str:
    """libpq URL of the ``tidelake`` database on port ``p``."""
    return f"postgresql://postgres@127.0.0.1:{p}/{DATABASE}"


def ready(daemon: Daemon) -> bool:
    """True if the server accepts connections (``pg_isready``)."""
    p = daemon.info().get("port")
    if not p:
        return False
    probe = subprocess.run(
        [
            str(BIN / "pg_isready"),
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(p),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-t",
            "2",
        ]
    )
    return probe.returncode == 0


def _create_database(p: int) -> None:
    import psycopg

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{p}/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            return
        conn.execute(f'CREATE DATABASE "{DATABASE}"')


def start(daemon: Daemon) -> str:
    """Start the cluster (initdb on first use) and return the URL of database ``tidelake``
    once ``pg_isready`` succeeds and the database exists."""
    ensure_installed()
    p = port()
    if port_open(p):
        raise InfraError(
            f"port {p} is already in use by another process; stop it or set "
            "TIDELAKE_POSTGRES_PORT to a free port"
        )
    daemon.run_dir.mkdir(parents=True, exist_ok=True)
    data, sock = _prepare(daemon.run_dir)
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(p),
        "unix_socket_directories": str(sock),
        "wal_level": "logical",
        "max_replication_slots": "16",
        "max_wal_senders": "16",
    }
    argv = [str(BIN / "postgres"), "-D", str(data)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    daemon.start(argv, user=_os_user(), cwd=data)
    daemon.write_info(url=url(p), port=p, data_dir=str(data), socket_dir=str(sock), version=MAJOR)
    daemon.wait_ready(lambda: ready(daemon), timeout=READY_TIMEOUT, what="pg_isready")
    _create_database(p)
    return url(p)


def stop(daemon: Daemon) -> bool:
    """Fast shutdown (SIGINT: disconnect clients, checkpoint), SIGKILL after 30 s."""
    return daemon.stop(sig=signal.SIGINT, grace=30.0)
