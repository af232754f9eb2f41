"""Start and stop real local services natively, on loopback only: Kafka, Kafka Connect with
Debezium, PostgreSQL, an S3 server, Cassandra, a MongoDB-wire server (FerretDB) and MariaDB.

    from tidelake import infra
    urls = infra.up(["kafka", "postgres"])   # {"kafka": "kafka://127.0.0.1:9092", ...}
    infra.status()                            # {"kafka": {"running": True, "pid": ..., ...}}
    infra.down()

Daemons outlive the Python process that started them; their pid, log and config files live in
``<state_dir>/<service>/`` (default ``$TIDELAKE_INFRA_DIR`` or ``~/.local/state/tidelake/infra``).
Downloads and builds are cached in ``$TIDELAKE_CACHE`` or ``~/.cache/tidelake``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tidelake.errors import InfraError
from tidelake.infra import cassandra, connect, kafka, mariadb, mongodb, postgres, s3
from tidelake.infra._process import Daemon, cache_root, dir_lock, say

__all__ = [
    "SERVICES",
    "Service",
    "cache_root",
    "down",
    "ensure_cached",
    "state_dir",
    "status",
    "up",
]


@dataclass(frozen=True)
class Service:
    """How to fetch, start, probe and stop one service."""

    name: str
    ensure_cached: Callable[[], object]
    start: Callable[[Daemon], str]
    ready: Callable[[Daemon], bool]
    stop: Callable[[Daemon], bool]
    requires: tuple[str, ...] = field(default=())


SERVICES: dict[str, Service] = {
    "kafka": Service("kafka", kafka.ensure_cached, kafka.start, kafka.ready, kafka.stop),
    "postgres": Service(
        "postgres", postgres.ensure_cached, postgres.start, postgres.ready, postgres.stop
    ),
    "connect": Service(
        "connect",
        connect.ensure_cached,
        connect.start,
        connect.ready,
        connect.stop,
        requires=("kafka",),
    ),
    "s3": Service("s3", s3.ensure_cached, s3.start, s3.ready, s3.stop),
    "cassandra": Service(
        "cassandra", cassandra.ensure_cached, cassandra.start, cassandra.ready, cassandra.stop
    ),
    "mongodb": Service(
        "mongodb", mongodb.ensure_cached, mongodb.start, mongodb.ready, mongodb.stop
    ),
    "mariadb": Service(
        "mariadb", mariadb.ensure_cached, mariadb.start, mariadb.ready, mariadb.stop
    ),
}


def state_dir(path: Path | None = None) -> Path:
    """The state directory: ``path``, else ``$TIDELAKE_INFRA_DIR``, else
    ``~/.local/state/tidelake/infra``."""
    if path is not None:
        return Path(path).expanduser().resolve()
    env = os.environ.get("TIDELAKE_INFRA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".local" / "state" / "tidelake" / "infra"


def _daemon(name: str, root: Path) -> Daemon:
    return Daemon(name, root / name)


def _expand(services: Iterable[str]) -> list[str]:
    """Validated names plus their requirements, dependencies first, no duplicates."""
    ordered: list[str] = []

    def add(name: str) -> None:
        if name not in SERVICES:
            raise InfraError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")
        for dep in SERVICES[name].requires:
            add(dep)
        if name not in ordered:
            ordered.append(name)

    for name in services:
        add(name)
    return ordered


def ensure_cached(services: Iterable[str] | None = None) -> None:
    """Download/build what ``services`` (default: all) need, without starting anything."""
    for name in _expand(services if services is not None else SERVICES):
        SERVICES[name].ensure_cached()


def up(services: Iterable[str], state_dir: Path | None = None) -> dict[str, str]:
    """Ensure each service (plus requirements, e.g. connect -> kafka) is running and ready.

    Idempotent: a service already running from this state dir is reused as is (a fast no-op).
    Returns service -> URL for every service started or reused. Raises InfraError with the
    service's log tail if one cannot be started.
    """
    root = _state_root(state_dir)
    urls: dict[str, str] = {}
    with dir_lock(root):  # one up/down at a time per state dir, across processes
        for name in _expand(services):
            urls[name] = _up_one(SERVICES[name], _daemon(name, root))
    return urls


def _up_one(svc: Service, daemon: Daemon) -> str:
    if daemon.running():
        if not svc.ready(daemon):  # e.g. restarted by hand and still starting
            daemon.wait_ready(partial(svc.ready, daemon), timeout=120.0)
        return str(daemon.info()["url"])
    started = time.monotonic()
    svc.ensure_cached()
    say(f"starting {svc.name}…")
    try:
        url = svc.start(daemon)
    except BaseException:
        svc.stop(daemon)  # never leave a half-started daemon behind
        raise
    say(f"{svc.name} ready at {url} ({time.monotonic() - started:.1f}s)")
    return url


def down(services: Iterable[str] | None = None, state_dir: Path | None = None) -> list[str]:
    """Stop ``services`` (default: all); dependents stop first (connect before kafka).

    Returns the names that were running. After it returns none of their processes remain.
    """
    root = _state_root(state_dir)
    wanted = list(services) if services is not None else list(SERVICES)
    for name in wanted:
        if name not in SERVICES:
            raise InfraError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")
    if services is not None:  # stopping kafka also stops what needs it
        wanted += [n for n, s in SERVICES.items() if set(s.requires) & set(wanted)]
    order = [n for n in reversed(_expand(SERVICES)) if n in wanted]
    with dir_lock(root):
        return [n for n in order if SERVICES[n].stop(_daemon(n, root))]


def status(state_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """service -> {running, pid, url, log, ...} for every known service (cheap: no probes)."""
    root = _state_root(state_dir)
    result: dict[str, dict[str, Any]] = {}
    for name in SERVICES:
        daemon = _daemon(name, root)
        pid = daemon.pid()
        info = daemon.info() if pid is not None else {}
        result[name] = {
            "running": pid is not None,
            "pid": pid,
            "url": info.get("url"),
            "log": str(daemon.log_file),
            **{k: v for k, v in info.items() if k != "url"},
        }
    return result


def _state_root(path: Path | None) -> Path:
    root = state_dir(path)
    root.mkdir(parents=True, exist_ok=True)
    return root
