"""Dead letters: what a flow could not process, with why and where it came from.

Every dead letter is one JSON record in the flow's dead-letter topic (``dead_letter:``,
default ``<pipeline>.<flow>.dlq``), of this shape (stable; new keys may be added)::

    {"flow": "orders_land",                       # the flow that rejected it
     "reason": "validate: amount > 0",            # why, as the rejecting stage put it
     "origin": {"topic": "orders", "partition": 0, "offset": 17},   # or null
     "payload": {"order_id": 2, "quantity": "two"}}                 # the record itself

``origin`` is where the record was read: the provenance columns ``_topic``/``_partition``/
``_offset`` of a row from a topic source, which are then left out of ``payload``; null for
rows of other sources. A record a source could not decode (its text in a ``_raw`` column)
has its JSON object as ``payload`` when it is one, else ``{"raw": "<its text>"}``.
``payload`` is the record as the stage that rejected it saw it (after the transforms before
that stage). A letter that would pass ``MAX_LETTER_BYTES`` (an oversized record is a common
reason for rejecting it, and Kafka refuses messages over about 1 MB) keeps only the start of
its payload: ``{"truncated": {"bytes": <size of the payload's JSON>, "head": "<its first
HEAD_CHARS characters>"}}``.

The topic is written at least once: a crash between a dead-letter write and the sink's
commit may write the same letter again when the batch is re-read (a redrive skips such
repeats: same origin, same payload).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from tidelake.errors import ConfigError, ConnectorError
from tidelake.runtime.base import PROVENANCE

RAW = "_raw"
"""Column holding the text of a record a source could not decode into a row."""

MAX_LETTER_BYTES = 512 * 1024
"""Largest dead letter written whole (below Kafka's default ``message.max.bytes``, 1 MB)."""
HEAD_CHARS = 4096

if TYPE_CHECKING:
    from tidelake.broker import Broker, Producer
    from tidelake.config import Pipeline


def dead_letter_topic(pipeline: Pipeline, flow: str) -> str:
    """The flow's dead-letter topic: its ``dead_letter:`` key or ``<pipeline>.<flow>.dlq``."""
    if flow not in pipeline.flows:
        raise ConfigError(
            f"flow {flow!r} is not in pipeline {pipeline.name!r} "
            f"(flows: {', '.join(pipeline.flows)})"
        )
    return pipeline.flows[flow].dead_letter or f"{pipeline.name}.{flow}.dlq"


class Writer:
    """Writes one flow's dead letters to its topic; each ``write`` is durable when it returns
    (a sink may reject rows inside its own commit, and a crash right after that commit must
    not lose them)."""

    def __init__(self, pipeline: Pipeline, flow: str, broker: Callable[[], Broker]) -> None:
        self.flow, self.topic, self._broker = flow, dead_letter_topic(pipeline, flow), broker
        self._producer: Producer | None = None

    def write(self, rows: pa.Table, reason: str | Sequence[str]) -> int:
        """Rows with one reason, or one reason per row; returns how many were written."""
        if not rows.num_rows:
            return 0
        if self._producer is None:
            broker = self._broker()
            broker.create_topic(self.topic)
            self._producer = broker.producer()
        self._producer.produce(self.topic, encode(self.flow, reason, rows))
        self._producer.flush()
        return rows.num_rows

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None


def quoted(value: object, limit: int = 80) -> str:
    """A value as a reason quotes it: ``repr``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def encode(flow: str, reason: str | Sequence[str], rows: pa.Table) -> list[bytes]:
    """One dead-letter record per row, with one reason for all or one per row (only rejected
    rows get here: not the hot path)."""
    reasons = [reason] * rows.num_rows if isinstance(reason, str) else list(reason)
    tracked = all(c in rows.column_names for c in PROVENANCE)
    out = []
    for row, why in zip(rows.to_pylist(), reasons, strict=True):
        origin = {k.lstrip("_"): row.pop(k) for k in PROVENANCE} if tracked else None
        payload = _undecoded(row.pop(RAW)) if RAW in row else row
        letter = {"flow": flow, "reason": why, "origin": origin, "payload": payload}
        encoded = orjson.dumps(letter, default=str)
        if len(encoded) > MAX_LETTER_BYTES:
            text = orjson.dumps(payload, default=str)
            head = text[: HEAD_CHARS * 4].decode("utf-8", "ignore")[:HEAD_CHARS]
            letter["payload"] = {"truncated": {"bytes": len(text), "head": head}}
            encoded = orjson.dumps(letter, default=str)
        out.append(encoded)
    return out


def _undecoded(text: str) -> dict[str, Any]:
    """The payload of a record a source could not decode: the JSON object it still is (a
    value of the wrong type), else its text."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        doc = None
    return doc if isinstance(doc, dict) else {"raw": text}


@dataclass
class Letter:
    """A dead letter read back, with its place in the dead-letter topic."""

    partition: int
    offset: int
    value: dict[str, Any]

    @property
    def reason(self) -> str:
        return str(self.value.get("reason", "(no reason)"))


def read(broker: Broker, topic: str, timeout: float = 120.0) -> Iterator[Letter]:
    """Every letter in ``topic`` up to its end when called (never commits a group offset)."""
    ends = {p: o for p, o in broker.end_offsets(topic).items() if o > 0}
    if not ends:
        return
    consumer = broker.consumer(f"tidelake-dlq-read-{uuid.uuid4().hex[:12]}", [topic])
    reached: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    try:
        while any(reached.get(p, 0) < o for p, o in ends.items()):
            batch = consumer.poll(10_000, 0.5)
            if not len(batch):
                if consumer.assignment() and not consumer.lag():
                    return  # read to the end (a record at the end may be gone already)
                if time.monotonic() > deadline:
                    raise ConnectorError(
                        f"dead-letter topic {topic!r}: could not read to its end within "
                        f"{timeout:.0f}s (read up to {reached}, end {ends}); is the log reachable?"
                    )
                continue
            deadline = time.monotonic() + timeout
            for p, o, v in zip(batch.partitions, batch.offsets, batch.values, strict=True):
                if p in ends and o < ends[p]:
                    yield Letter(p, o, _parse(v))
            for (_, p), o in batch.next_offsets().items():
                reached[p] = o
    finally:
        consumer.close()


def _parse(value: bytes | None) -> dict[str, Any]:
    """A letter's JSON; a record that is not one (written by hand) is shown as its text."""
    try:
        doc = orjson.loads(value or b"null")
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        return doc
    text = (value or b"").decode("utf-8", "replace")
    return {"reason": "(not a dead letter)", "origin": None, "payload": {"raw": text}}
