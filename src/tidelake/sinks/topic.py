"""Write batches to a topic of the pipeline's log as JSON records.

Delivery is at-least-once: records are flushed to the log before the position is
stored, so a crash in between re-sends the last batch. Downstream table and lake
sinks de-duplicate by provenance, so end-to-end results stay exactly-once.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field

from tidelake.broker import Producer
from tidelake.formats import encode_json
from tidelake.runtime.base import Checkpoint, ConnectorConfig, FlowContext, Sink
from tidelake.sinks.checkpoints import CheckpointStore


class TopicSinkConfig(ConnectorConfig):
    type: Literal["topic"]
    topic: str = Field(description="destination topic")
    key: str | None = Field(None, description="column whose value is the record key")
    partitions: int = Field(1, ge=1, description="partitions when the topic is created")
    keep_provenance: bool = Field(False, description="keep _topic/_partition/_offset columns")


class TopicSink(Sink):
    Config = TopicSinkConfig
    config: TopicSinkConfig

    def open(self, ctx: FlowContext) -> None:
        ctx.broker.create_topic(self.config.topic, self.config.partitions)
        self.producer: Producer = ctx.broker.producer()
        self.store = CheckpointStore(ctx.pipeline.state_dir / "checkpoints.db", ctx.flow)

    def checkpoint(self) -> Checkpoint:
        return self.store.load()

    def write(self, table: pa.Table, checkpoint: Checkpoint) -> None:
        if table.num_rows:
            if not self.config.keep_provenance:
                drop = [c for c in ("_topic", "_partition", "_offset") if c in table.column_names]
                table = table.drop_columns(drop)
            keys = None
            if self.config.key:
                col = table.column(self.config.key).cast(pa.string())
                keys = [k.encode() if k is not None else None for k in col.to_pylist()]
            self.producer.produce(self.config.topic, encode_json(table), keys)
            self.producer.flush()
        self.store.save(checkpoint)

    def close(self) -> None:
        self.producer.close()
        self.store.close()
