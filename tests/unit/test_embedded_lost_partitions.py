"""A member of an embedded consumer group evicted for silence must not flush the partitions
it lost: they may be another member's already (Kafka's onPartitionsLost)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tidelake.broker.embedded import EmbeddedBroker, EmbeddedConsumer
from tidelake.errors import Fenced


def test_a_member_silent_past_its_session_timeout_loses_its_partitions_without_revoke(
    tmp_path: Path,
) -> None:
    broker = EmbeddedBroker(str(tmp_path / "log.db"))
    broker.create_topic("t", 2)
    revoked: list[list[tuple[str, int]]] = []
    a = EmbeddedConsumer(broker, "g", ["t"], on_revoke=revoked.append, session_timeout=0.5)
    a.poll(10, 0)
    assert a.assignment() == [("t", 0), ("t", 1)]
    time.sleep(0.8)  # a is paused past its session timeout
    b = EmbeddedConsumer(broker, "g", ["t"], session_timeout=0.5)
    b.poll(10, 0)
    assert b.assignment() == [("t", 0), ("t", 1)]  # a was evicted, b took everything
    with pytest.raises(Fenced, match=r"t/0, t/1 went to another member"):
        a.poll(10, 0)
    assert revoked == []  # nothing was flushed for partitions b may already read
    assert a.assignment() == []
    b.close()
    a.close()
    broker.close()
