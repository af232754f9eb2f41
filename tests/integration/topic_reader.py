"""Read back what flows wrote to a topic, as a downstream read_committed consumer would."""

from __future__ import annotations

import time
from typing import Any

import orjson

from tidelake.broker import Broker


def read_to_end(broker: Broker, topic: str, wait: float = 0.5, idle: int = 3) -> list[Any]:
    """Every committed record of ``topic``, JSON-decoded, through a fresh consumer group;
    the end is when ``idle`` polls of ``wait`` seconds in a row bring nothing."""
    consumer = broker.consumer(f"check-{time.monotonic_ns()}", [topic])
    records: list[Any] = []
    quiet = 0
    try:
        while quiet < idle:
            batch = consumer.poll(50_000, wait)
            quiet = 0 if len(batch) else quiet + 1
            records.extend(orjson.loads(v) for v in batch.values)
    finally:
        consumer.close()
    return records
