"""Run one local service as a detached daemon: pid file, log file, readiness, stop.

Each service owns a run directory ``<state_dir>/<name>/`` holding ``pid`` (``"<pid> <start
ticks>"`` so a recycled pid is never mistaken for our process), ``service.log`` (the daemon's
stdout and stderr, rotated to ``service.log.1`` at start once past 50 MiB) and
``service.json`` (what ``status`` reports, e.g. the URL).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidelake.errors import InfraError


@contextlib.contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``directory`` (its ``.lock`` file)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def say(message: str) -> None:
    """Print one progress line on stderr (never secrets)."""
    print(f"tidelake.infra: {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """Download/build cache shared by all runs: ``$TIDELAKE_CACHE`` or ``~/.cache/tidelake``."""
    env = os.environ.get("TIDELAKE_CACHE")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "tidelake"


def env_port(var: str, default: int) -> int:
    """Port from environment variable ``var`` (default ``default``); fails fast if not a port."""
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise InfraError(f"{var}={raw!r} is not a TCP port; set it to a number in 1..65535")
    return int(raw)


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_tool(name: str, hint: str) -> str:
    """Absolute path of executable ``name`` on PATH, or InfraError carrying ``hint``."""
    found = shutil.which(name)
    if not found:
        raise InfraError(f"'{name}' is not on PATH: {hint}")
    return found


def as_user(user: str | None) -> dict[str, Any]:
    """subprocess keyword arguments that run a child as OS ``user`` (uid, gid, no extra groups)."""
    if user is None:
        return {}
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise InfraError(
            f"OS user {user!r} does not exist; install the package that creates it"
        ) from exc
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def run_checked(
    argv: Sequence[str],
    *,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
) -> str:
    """Run a short command to completion; return stdout or raise InfraError with its output."""
    proc = subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(env) if env else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        **as_user(user),
    )
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip().splitlines()[-30:]
        raise InfraError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(out))
    return proc.stdout


def _start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks from /proc, or None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our exited child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@dataclass(frozen=True)
class Daemon:
    """One service's run directory and process bookkeeping."""

    name: str
    run_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "service.log"

    @property
    def info_file(self) -> Path:
        return self.run_dir / "service.json"

    def pid(self) -> int | None:
        """Pid of the running daemon, or None (stale pid files are removed)."""
        try:
            pid_s, ticks_s = self.pid_file.read_text().split()
            pid, ticks = int(pid_s), int(ticks_s)
        except (OSError, ValueError):
            return None
        _reap(pid)
        if _start_ticks(pid) != ticks:
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def running(self) -> bool:
        """True while the recorded process is alive."""
        return self.pid() is not None

    def info(self) -> dict[str, Any]:
        """What the last ``start`` recorded (url, port, ...); empty if never started."""
        try:
            return dict(json.loads(self.info_file.read_text()))
        except (OSError, ValueError):
            return {}

    def write_info(self, **info: Any) -> None:
        """Record facts about the running service for ``status``."""
        self.info_file.write_text(json.dumps(info, indent=2))

    def log_tail(self, lines: int = 40) -> str:
        """Last ``lines`` lines of the service log ('' if none)."""
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64_000))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    LOG_KEEP_BYTES = 50 << 20

    def _rotate_log(self) -> None:
        """Keep logs bounded across restarts: a log past ``LOG_KEEP_BYTES`` becomes
        ``service.log.1`` (replacing the previous one) before the service starts again."""
        with contextlib.suppress(OSError):
            if self.log_file.stat().st_size > self.LOG_KEEP_BYTES:
                self.log_file.replace(self.log_file.with_name("service.log.1"))

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> int:
        """Spawn ``argv`` in a new session with output appended to the log; return its pid.

        The daemon survives the calling Python process. Raises InfraError if one is running.
        """
        if self.running():
            raise InfraError(f"{self.name} is already running (pid file {self.pid_file})")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._rotate_log()
        with self.log_file.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd or self.run_dir,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                close_fds=True,
                **as_user(user),
            )
        ticks = _start_ticks(proc.pid)
        if ticks is None:
            proc.wait()
            raise InfraError(
                f"{self.name} exited immediately (exit {proc.returncode}); "
                f"log {self.log_file}:\n{self.log_tail()}"
            )
        self.pid_file.write_text(f"{proc.pid} {ticks}\n")
        return proc.pid

    def wait_ready(self, check: Callable[[], bool], *, timeout: float, what: str = "") -> None:
        """Poll ``check`` until True; InfraError (with the log tail) on death or timeout."""
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            if not self.running():
                raise InfraError(
                    f"{self.name} exited while starting; log {self.log_file}:\n{self.log_tail()}"
                )
            try:
                if check():
                    return
            except Exception:  # noqa: BLE001 - any failure of a probe means "not yet"
                pass
            if time.monotonic() > deadline:
                raise InfraError(
                    f"{self.name} not ready after {timeout:.0f}s ({what or 'readiness check'}); "
                    f"it is still running, see {self.log_file} or run `tidelake infra down`."
                    f"\nlast log lines:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def stop(self, *, sig: int = signal.SIGTERM, grace: float = 30.0) -> bool:
        """Send ``sig``, wait up to ``grace`` s, then SIGKILL the whole process group.

        Returns True if a process was stopped. Guarantees nothing of the group is left.
        """
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.running():
            say(f"{self.name} ignored {signal.Signals(sig).name} for {grace:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # session leader: pgid == pid; takes its children
        deadline = time.monotonic() + 10
        while self.running():
            if time.monotonic() > deadline:
                raise InfraError(f"{self.name} (pid {pid}) survived SIGKILL; check `ps -p {pid}`")
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True
