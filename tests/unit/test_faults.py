"""Which failures a flow waits out, and the one line it shows for them."""

from __future__ import annotations

import errno
import sqlite3

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException

from tidelake.errors import ConfigError, ConnectorError, TransientError
from tidelake.runtime.faults import classify


def _wrapped(inner: BaseException) -> ConnectorError:
    try:
        raise inner
    except BaseException as e:
        try:
            raise ConnectorError("the sink failed") from e
        except ConnectorError as outer:
            return outer


@pytest.mark.parametrize(
    "error",
    [
        sqlite3.OperationalError("database is locked"),
        psycopg.OperationalError("server closed the connection unexpectedly"),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN)),
        TransientError("Kafka at 127.0.0.1:9092 failed to read"),
        _wrapped(psycopg.OperationalError("terminating connection due to administrator command")),
    ],
)
def test_faults_that_clear_by_themselves_are_transient(error: BaseException) -> None:
    assert classify(error).transient


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("a bug"),
        ConfigError("p.yaml:3: flows.x: unknown key"),
        sqlite3.OperationalError("no such table: t"),
        KafkaException(KafkaError(KafkaError._FENCED, fatal=True)),
        ConnectorError("another instance of the flow is writing"),
        _wrapped(ConfigError("bad")),
    ],
)
def test_other_faults_are_permanent(error: BaseException) -> None:
    assert not classify(error).transient


def test_a_full_disk_is_waited_out_with_a_reason_that_says_so() -> None:
    fault = classify(_wrapped(OSError(errno.ENOSPC, "No space left on device")))
    assert fault.transient
    assert fault.reason.startswith("disk full") and "free space" in fault.reason


def test_reasons_name_the_system_in_one_line() -> None:
    reason = classify(psycopg.OperationalError("server closed\nthe connection")).reason
    assert reason == "PostgreSQL: OperationalError: server closed"
