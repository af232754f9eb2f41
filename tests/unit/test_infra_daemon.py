"""The daemon bookkeeping every service uses, on a real (tiny) process."""

from __future__ import annotations

from pathlib import Path

from tidelake.infra._process import Daemon


def test_log_is_rotated_at_start_once_too_big(tmp_path: Path) -> None:
    d = Daemon("sleeper", tmp_path / "sleeper")
    d.run_dir.mkdir(parents=True)
    d.log_file.write_bytes(b"old line\n" * 10)
    d.start(["sleep", "30"])
    d.stop()
    assert b"old line" in d.log_file.read_bytes(), "a small log is appended to"
    assert not d.log_file.with_name("service.log.1").exists()

    d.log_file.write_bytes(b"x" * (Daemon.LOG_KEEP_BYTES + 1))
    d.start(["sleep", "30"])
    d.stop()
    rotated = d.log_file.with_name("service.log.1")
    assert rotated.stat().st_size == Daemon.LOG_KEEP_BYTES + 1
    assert d.log_file.stat().st_size < 1000, "the new log starts empty but for the banner"
