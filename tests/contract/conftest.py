"""The ``broker`` fixture: every contract test runs unchanged on each backend.

- ``embedded``: a fresh SQLite log under ``tmp_path``;
- ``kafka`` (marked ``integration``): a real Kafka started (or reused) through
  ``tidelake.infra.up(["kafka"])``; ``$TIDELAKE_TEST_KAFKA_URL`` points the tests
  at another running cluster instead. Tests use unique topic and group names,
  so one broker serves the whole session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tidelake.broker import Broker, connect
from tidelake.broker.embedded import EmbeddedBroker


@pytest.fixture(scope="session")
def kafka_url() -> str:
    url = os.environ.get("TIDELAKE_TEST_KAFKA_URL")
    if url:
        return url
    from tidelake.infra import up

    return up(["kafka"])["kafka"]


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.integration)])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    if request.param == "embedded":
        b: Broker = EmbeddedBroker(str(tmp_path / "log.db"))
    else:
        b = connect(request.getfixturevalue("kafka_url"))
    yield b
    b.close()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``name("orders")`` -> a topic/group name unique to this test run."""
    run = uuid.uuid4().hex[:8]
    test = request.node.originalname.removeprefix("test_").replace("_", "-")[:30]
    return lambda label: f"contract-{test}-{label}-{run}"
