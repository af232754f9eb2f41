"""A librdkafka call that ignores its timeout is given up (kafka._bounded)."""

from __future__ import annotations

import threading
import time

import pytest

from tidelake.broker import kafka


def test_a_call_that_never_returns_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "_GRACE", 0.1)
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(kafka._Stuck):
        kafka._bounded(lambda timeout: release.wait(), 0.2)
    assert time.monotonic() - started < 2
    release.set()


def test_a_call_returns_its_error_and_gets_its_timeout() -> None:
    given: list[float] = []

    def fail(timeout: float) -> None:
        given.append(timeout)
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        kafka._bounded(fail, 3.0)
    assert given == [3.0]
    kafka._bounded(given.append, 1.0)
    assert given == [3.0, 1.0]
