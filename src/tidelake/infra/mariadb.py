"""MariaDB (Debian's mariadb-server) with a row-based binlog, a private server on loopback.

The binlog settings (``binlog_format=ROW``, full row images and metadata) are what the
``mysql`` CDC engine needs; root may connect without a password from 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tidelake.errors import InfraError
from tidelake.infra._process import Daemon, env_port, port_open, run_checked, say

DATABASE = "tidelake"
READY_TIMEOUT = 60.0
PACKAGE = "mariadb-server"


def port() -> int:
    """``$TIDELAKE_MARIADB_PORT`` or 3307 (3306 is left to a system server)."""
    return env_port("TIDELAKE_MARIADB_PORT", 3307)


def ensure_installed() -> Path:
    """Return the ``mariadbd`` binary, installing Debian's package if missing (needs root)."""
    found = shutil.which("mariadbd") or (
        "/usr/sbin/mariadbd" if Path("/usr/sbin/mariadbd").is_file() else None
    )
    if found:
        return Path(found)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise InfraError(
            "mariadbd not found; install MariaDB (Debian/Ubuntu: sudo apt-get install -y "
            f"{PACKAGE})"
        )
    say("installing MariaDB with apt-get (first run only)…")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run_checked(["apt-get", "update"], what="apt-get update", env=env)
    run_checked(
        ["apt-get", "install", "-y", "--no-install-recommends", PACKAGE],
        what=f"apt-get install {PACKAGE}",
        env=env,
    )
    return ensure_installed()


ensure_cached = ensure_installed


def url(p: int) -> str:
    """URL of the ``tidelake`` database on port ``p``."""
    return f"mysql://root@127.0.0.1:{p}/{DATABASE}"


def _config(run: Path, p: int) -> Path:
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "")
    cnf = run / "my.cnf"
    cnf.write_text(
        f"""\
[mariadbd]
datadir={run / "data"}
socket={run / "mariadb.sock"}
pid-file={run / "mariadb.pid"}
log_error={run / "error.log"}
port={p}
bind-address=127.0.0.1
user={user}
skip-name-resolve
server_id=1
log_bin={run / "binlog" / "binlog"}
binlog_format=ROW
binlog_row_image=FULL
binlog_row_metadata=FULL
innodb_buffer_pool_size=128M
innodb_log_file_size=64M
max_connections=200
character-set-server=utf8mb4
collation-server=utf8mb4_bin
"""
    )
    return cnf


def _connect(run: Path) -> object:
    import pymysql

    return pymysql.connect(unix_socket=str(run / "mariadb.sock"), user="root", autocommit=True)


def _socket_answers(run: Path) -> bool:
    """True once root can log in over the Unix socket (raises while it refuses)."""
    _connect(run).close()  # type: ignore[attr-defined]
    return True


def ready(daemon: Daemon) -> bool:
    """True once the server answers over TCP as root@127.0.0.1."""
    p = daemon.info().get("port")
    if not p or not port_open(int(p)):
        return False
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=int(p), user="root", connect_timeout=2)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone() == (1,)
    finally:
        conn.close()


def _bootstrap_users(run: Path) -> None:
    """root@127.0.0.1 without a password (loopback-only server) and the ``tidelake`` database."""
    conn = _connect(run)
    try:
        with conn.cursor() as cur:  # type: ignore[attr-defined]
            cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{DATABASE}`")
    finally:
        conn.close()  # type: ignore[attr-defined]


def start(daemon: Daemon) -> str:
    """Start the server (``mariadb-install-db`` on first use); return the URL once root can
    connect over TCP."""
    mariadbd = ensure_installed()
    p = port()
    if port_open(p):
        raise InfraError(
            f"port {p} is already in use by another process; stop it or set "
            "TIDELAKE_MARIADB_PORT to a free port"
        )
    run = daemon.run_dir
    (run / "binlog").mkdir(parents=True, exist_ok=True)
    cnf = _config(run, p)
    if not (run / "data" / "mysql").is_dir():
        shutil.rmtree(run / "data", ignore_errors=True)
        say(f"initializing a MariaDB data directory in {run / 'data'}…")
        run_checked(
            [
                "mariadb-install-db",
                f"--defaults-file={cnf}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            what="mariadb-install-db",
        )
    for stale in ("mariadb.sock", "mariadb.sock.lock", "mariadb.pid"):  # left by a killed server
        (run / stale).unlink(missing_ok=True)
    daemon.start([str(mariadbd), f"--defaults-file={cnf}"])
    daemon.write_info(url=url(p), port=p, socket=str(run / "mariadb.sock"))
    daemon.wait_ready(lambda: _socket_answers(run), timeout=READY_TIMEOUT, what="socket")
    _bootstrap_users(run)
    daemon.wait_ready(lambda: ready(daemon), timeout=READY_TIMEOUT, what="TCP login")
    return url(p)


def stop(daemon: Daemon) -> bool:
    """SIGTERM (clean InnoDB shutdown), SIGKILL after 30 s."""
    return daemon.stop(grace=30.0)
