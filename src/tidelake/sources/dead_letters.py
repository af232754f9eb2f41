"""``dead_letters``: a flow's dead letters as rows again (what ``tidelake dlq redrive`` reads).

A topic source over the flow's dead-letter topic, in its own consumer group, that turns each
dead letter back into its ``payload`` (see :mod:`tidelake.runtime.dead_letters`); the rows
keep the dead-letter topic's provenance, so a sink's checkpoint records which letters it
landed and a restarted flow never reads one twice. With ``until_end`` the source ends once it
has read every letter the topic held when the flow started.
"""

from __future__ import annotations

from typing import Literal

import duckdb
import pyarrow as pa
from pydantic import Field

from tidelake.broker import MessageBatch
from tidelake.runtime.base import Batch, Checkpoint, ConnectorConfig, FlowContext
from tidelake.runtime.dead_letters import dead_letter_topic
from tidelake.sources.topic import TopicSource, TopicSourceConfig, position_key


class DeadLetterSourceConfig(ConnectorConfig):
    type: Literal["dead_letters"]
    flow: str = Field(description="the flow whose dead letters to read")
    group: str | None = Field(None, description="consumer group (default: <pipeline>.<flow>)")
    until_end: bool = Field(False, description="end after the letters present at the start")


class DeadLetterSource(TopicSource):
    Config = DeadLetterSourceConfig  # type: ignore[assignment]

    def __init__(self, config: DeadLetterSourceConfig) -> None:
        self.letters = config
        super().__init__(TopicSourceConfig(type="topic", topic="", group=config.group))

    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        topic = dead_letter_topic(ctx.pipeline, self.letters.flow)
        self.config = self.config.model_copy(update={"topic": topic})
        self._ends = {
            position_key(topic, p): o for p, o in ctx.broker.end_offsets(topic).items() if o > 0
        }
        self._reached = dict(checkpoint)
        self._done = False
        self._seen: set[str] = set()  # origin + payload of the letters read so far
        super().open(ctx, checkpoint)

    def read(self, max_records: int, timeout: float) -> Batch | None:  # type: ignore[override]
        if self._done:
            return None
        batch = super().read(max_records, timeout)
        self._reached.update(batch.positions)
        if self.letters.until_end and self._at_end(batch):
            self._done = True
            if not batch.positions:
                return None
        return batch

    def _at_end(self, batch: Batch) -> bool:
        if all(self._reached.get(k, 0) >= o for k, o in self._ends.items()):
            return True
        # nothing new, every partition ours and read to its end (the start of a partition
        # is the sink's checkpoint or, without one, the group's offset)
        mine = {position_key(*tp) for tp in self.consumer.assignment()}
        return not batch.positions and mine >= set(self._ends) and not self.consumer.lag()

    def _decode(self, msgs: MessageBatch) -> pa.Table:
        """Each letter's ``payload`` object as a row, decoded in bulk, with the letters'
        provenance in the dead-letter topic. A record without a ``payload`` object is taken
        as it is (one that is not JSON becomes a dead letter of this flow). A letter with the
        origin and payload of one read before in this run is a repeat (the dead-letter topic
        is written at least once) and is skipped."""
        if not len(msgs):
            return pa.table({})
        raw = pa.array(msgs.values, pa.binary())
        try:
            texts = raw.cast(pa.string())
        except pa.ArrowInvalid:  # a letter that is not UTF-8: left as it is (below)
            texts = pa.array([_utf8(v) for v in msgs.values], pa.string())
        con = duckdb.connect()
        try:
            con.register("letters", pa.table({"s": texts}))
            letters = con.sql(
                "SELECT CASE WHEN json_valid(s) AND json_type(s, '$.payload') = 'OBJECT'"
                " THEN CAST(json_extract(s, '$.payload') AS VARCHAR) END AS payload,"
                " CASE WHEN json_valid(s) AND json_type(s, '$.origin') = 'OBJECT'"
                " THEN md5(CAST(json_extract(s, '$.origin') AS VARCHAR) || payload) END AS key"
                " FROM letters"
            ).to_arrow_table()
        finally:
            con.close()
        keep: list[int] = []
        values: list[bytes | None] = []
        for i, (payload, key) in enumerate(
            zip(letters.column(0).to_pylist(), letters.column(1).to_pylist(), strict=True)
        ):
            if key is not None:
                if key in self._seen:
                    continue  # the same record rejected again after a crash
                self._seen.add(key)
            keep.append(i)
            values.append(msgs.values[i] if payload is None else payload.encode())
        return super()._decode(
            MessageBatch(
                [msgs.topics[i] for i in keep],
                [msgs.partitions[i] for i in keep],
                [msgs.offsets[i] for i in keep],
                [msgs.timestamps[i] for i in keep],
                [msgs.keys[i] for i in keep],
                values,
            )
        )


def _utf8(value: bytes | None) -> str | None:
    try:
        return None if value is None else value.decode()
    except UnicodeDecodeError:
        return None
