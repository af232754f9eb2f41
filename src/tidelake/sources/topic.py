"""Read a topic of the pipeline's log as JSON records, in consumer-group scale-out.

Resumes from the *sink's* checkpoint, not from the group's committed offsets:
whenever partitions are assigned (first start, restart, rebalance) they are
claimed in the sink (``FlowContext.claim``) and sought to the positions it stored with
its data. Group offsets are
committed (without waiting) only after the sink committed, for monitoring and lag; a topic
sink commits them inside its transactions instead.
"""

from __future__ import annotations

import time
from typing import Literal

import pyarrow as pa
from pydantic import Field

from tidelake.broker import Consumer, MessageBatch, TopicPartition
from tidelake.formats import decode_json
from tidelake.formats.json import project_schema
from tidelake.runtime.base import (
    PROVENANCE,
    Batch,
    Checkpoint,
    ConnectorConfig,
    FlowContext,
    Source,
)
from tidelake.runtime.dead_letters import RAW

LAG_EVERY = 2.0
"""Seconds between two lag measurements (one end-offsets request per topic)."""


def position_key(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


class TopicSourceConfig(ConnectorConfig):
    type: Literal["topic"]
    topic: str | list[str] = Field(description="topic name, or several")
    group: str | None = Field(None, description="consumer group (default: <pipeline>.<flow>)")


class TopicSource(Source):
    Config = TopicSourceConfig
    config: TopicSourceConfig

    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        self.ctx = ctx
        topics = [self.config.topic] if isinstance(self.config.topic, str) else self.config.topic
        group = self.config.group or f"{ctx.pipeline.name}.{ctx.flow}"
        self._next: dict[str, int] = {}
        self._lag_at = 0.0
        self._reads: list[str] | None = None  # what the flow reads, asked at the first batch
        self._asked = False
        self._schema: pa.Schema | None = None  # those columns' types, for decode_json
        self.consumer: Consumer = ctx.broker.consumer(
            group, topics, on_assign=self._on_assign, on_revoke=self._on_revoke
        )

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        keys = [position_key(*tp) for tp in partitions]
        stored = self.ctx.claim(keys)
        self.consumer.seek(
            {tp: stored[key] for tp, key in zip(partitions, keys, strict=True) if key in stored}
        )
        self._next.update({key: stored.get(key, 0) for key in keys})

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        try:
            self.ctx.flush()
        finally:
            keys = [position_key(*tp) for tp in partitions]
            self.ctx.release(keys)
            for key in keys:
                self._next.pop(key, None)

    def read(self, max_records: int, timeout: float) -> Batch:
        msgs = self.consumer.poll(max_records, timeout)
        positions = {position_key(*tp): o for tp, o in msgs.next_offsets().items()}
        self._next.update(positions)
        if time.monotonic() - self._lag_at >= LAG_EVERY:
            self._publish_lag()
        return Batch(self._decode(msgs), positions)

    def _publish_lag(self) -> None:
        """Lag per owned partition (end offset - next offset to read), for the console/API."""
        self._lag_at = time.monotonic()
        ends = {
            t: self.ctx.broker.end_offsets(t) for t in {tp[0] for tp in self.consumer.assignment()}
        }
        lags = {
            position_key(t, p): max(0, ends[t].get(p, 0) - self._next.get(position_key(t, p), 0))
            for t, p in self.consumer.assignment()
        }
        self.ctx.metrics.partitions, self.ctx.metrics.lag = lags, sum(lags.values())

    def _decode(self, msgs: MessageBatch) -> pa.Table:
        """JSON values -> columns plus provenance; malformed values go to the dead-letter topic.

        Tombstones (null values) carry no row: they are skipped, their offsets still count.
        Only the columns the flow reads are decoded (``FlowContext.reads``), with the types
        the last batch decoded whole had; a batch that does not fit them is decoded whole.
        """
        if not len(msgs):
            return pa.table({})
        table, bad = decode_json(msgs.values, self._schema)
        if not self._asked or (self._reads and table.schema != self._schema):
            self._project(table.schema)
        provenance = {
            "_topic": pa.array(msgs.topics, pa.string()),
            "_partition": pa.array(msgs.partitions, pa.int32()),
            "_offset": pa.array(msgs.offsets, pa.int64()),
        }
        if bad:
            self._dead_letter(msgs, [(i, r) for i, r in bad if r != "tombstone"])
            rejected = {i for i, _ in bad}
            keep = pa.array([i for i in range(len(msgs)) if i not in rejected], pa.int64())
            provenance = {k: v.take(keep) for k, v in provenance.items()}
        if not table.num_columns:
            return pa.table(provenance)
        for name, col in provenance.items():
            table = table.append_column(name, col)
        return table

    def _project(self, decoded: pa.Schema) -> None:
        """The columns to decode from now on, typed as in ``decoded`` (a whole batch)."""
        if not self._asked:
            provenance = pa.schema([("_topic", pa.string()), ("_partition", pa.int32())])
            full = pa.unify_schemas([decoded, provenance, pa.schema([("_offset", pa.int64())])])
            self._reads, self._asked = self.ctx.reads(full), True
        paths = [p for p in self._reads or [] if p not in PROVENANCE]
        self._schema = project_schema(decoded, paths) if paths else None

    def _dead_letter(self, msgs: MessageBatch, bad: list[tuple[int, str]]) -> None:
        for i, reason in bad:
            raw = msgs.values[i] or b""
            row = pa.table(
                {
                    "_topic": [msgs.topics[i]],
                    "_partition": [msgs.partitions[i]],
                    "_offset": [msgs.offsets[i]],
                    RAW: [raw.decode("utf-8", "replace")],
                }
            )
            self.ctx.dead_letter(row, reason)

    def group_member(self) -> Consumer | None:
        return getattr(self, "consumer", None)

    def committed(self, checkpoint: Checkpoint) -> None:
        mine = {position_key(*tp): tp for tp in self.consumer.assignment()}
        offsets = {tp: checkpoint[k] for k, tp in mine.items() if k in checkpoint}
        self.consumer.commit(offsets, wait=False)  # for lag and monitoring: never wait

    def close(self) -> None:
        if hasattr(self, "consumer"):  # open() may have failed before connecting
            self.consumer.close()
