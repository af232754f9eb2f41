"""Write batches to a topic of the pipeline's log as JSON records, exactly once.

Each ``write`` is ONE log transaction (docs/architecture.md, principle 1): the batch's
records and the flow's checkpoint become visible together or not at all. The checkpoint
has two parts, both in the transaction:

- positions in the partitions of a ``topic`` source are the consumer group's offsets,
  sent with the transaction (``send_offsets``, Kafka's KIP-447; the embedded log's
  equivalent). The log commits them only while this worker's consumer still owns those
  partitions in the group (the group generation; the embedded ``owners`` table): a worker
  that lost them (paused past its session timeout, cut off) cannot land its stale batch,
  its commit raises ``Fenced`` and it rejoins. So several workers of one flow
  (``--workers``) write to the same topics at once, each one committing its own
  partitions. When partitions are assigned, ``claim`` resumes them from the group's
  offsets, which waits for a transaction still carrying some (OffsetFetch require_stable);
- every other key (positions of other sources, a window's state) is a JSON record keyed
  ``<pipeline>/<flow>`` in the compacted topic ``_tidelake_checkpoints`` of the same log
  (checkpoints of earlier versions, there too, are read as a floor).

A flow killed mid-batch leaves an open (Kafka) or unwritten (embedded) transaction that
read_committed consumers never see. The transactional producer's id is
``tidelake/<pipeline>/<flow>`` (with ``/<worker>`` for a worker of several): a restarted
flow fences its dead predecessor, aborting that transaction, and a second process running
the same flow without ``--workers`` fences the first. The checkpoint belongs to the log, not
to the state dir: two deployments of one pipeline on one Kafka cluster share it unless their
sinks set distinct ``transactional_id``s.

``topic`` may be a template over columns (``"{topic}"``, ``"cdc.{_table}"``): each row
goes to the topic it names (order kept within a topic). ``value: envelope`` writes CDC
rows as Debezium's JSON payload ``{"before", "after", "source", "op", "ts_ms"}`` — the
``before``/``after``/``source`` JSON strings are embedded as JSON, not re-quoted.
A row is never written back to the topic it was read from (its ``_topic``): it would come
back as a new record, forever; the flow fails instead, before writing anything.
"""

from __future__ import annotations

import logging
from typing import Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tidelake import column_templates
from tidelake.broker.base import TransactionalProducer
from tidelake.errors import ConfigError, ConnectorError
from tidelake.formats import encode_json
from tidelake.formats.json import json_text, select
from tidelake.runtime.base import Checkpoint, ConnectorConfig, FlowContext, Sink
from tidelake.sinks.checkpoints import CheckpointStore

log = logging.getLogger(__name__)

CHECKPOINT_TOPIC = "_tidelake_checkpoints"
CHECKPOINT_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    # keep the topic short for Kafka's read-to-the-end on start: roll and compact often
    "segment.ms": str(3_600_000),
    "min.cleanable.dirty.ratio": "0.1",
}


class TopicSinkConfig(ConnectorConfig):
    type: Literal["topic"]
    topic: str = Field(
        description="destination topic, or a template over columns: '{topic}', 'cdc.{_table}'"
    )
    key: str | None = Field(None, description="column whose value is the record key")
    partitions: int = Field(1, ge=1, description="partitions when the topic is created")
    keep_provenance: bool = Field(False, description="keep _topic/_partition/_offset columns")
    value: Literal["row", "envelope"] = Field(
        "row", description="row: all columns as JSON; envelope: Debezium payload of CDC rows"
    )
    transactional_id: str | None = Field(
        None,
        description="this flow's writer and checkpoint in the log (default: "
        "'<pipeline>/<flow>'); deployments sharing one log need distinct ids",
    )


class TopicSink(Sink):
    Config = TopicSinkConfig
    config: TopicSinkConfig
    several_writers = True
    commits_group_offsets = True

    def open(self, ctx: FlowContext) -> None:
        self.fields = column_templates.fields(self.config.topic)
        self.created: set[str] = set()
        self.broker = ctx.broker
        self.ctx = ctx
        if not self.fields:
            self._create(self.config.topic)
        self.broker.create_topic(CHECKPOINT_TOPIC, 1, CHECKPOINT_TOPIC_CONFIG)
        writer = self.config.transactional_id or f"{ctx.pipeline.name}/{ctx.flow}"
        self.key = writer.encode()
        # fences a previous instance of this flow (a killed one's open transaction is aborted)
        # before the checkpoint is read, so what is read is final
        self.producer: TransactionalProducer = self.broker.transactional_producer(
            f"tidelake/{writer}" + (f"/{ctx.worker}" if ctx.worker else "")
        )
        self._committed: Checkpoint | None = None
        self._claimed: dict[str, tuple[str, int]] = {}  # partition key -> (topic, partition)
        self._sent: Checkpoint = {}  # group offsets committed by this sink

    def checkpoint(self) -> Checkpoint:
        """The record of the last committed transaction (keys no consumer group holds); read
        once, then kept: other workers of the flow only move group offsets."""
        if self._committed is None:
            raw = self.broker.latest(CHECKPOINT_TOPIC, [self.key]).get(self.key)
            self._committed = orjson.loads(raw) if raw else self._legacy()
        return dict(self._committed)

    def claim(self, keys: list[str]) -> Checkpoint:
        """Partitions assigned to this worker: their positions are the group's offsets (or,
        higher, a position an earlier version stored in the record)."""
        stored = self.checkpoint()
        member = self.ctx.group()
        if member is None:
            return stored
        tps = {key: _partition(key) for key in keys}
        offsets = member.committed(list(tps.values()))
        for key, tp in tps.items():
            if tp in offsets:
                stored[key] = max(offsets[tp], stored.get(key, 0))
                self._sent[key] = offsets[tp]
        self._claimed.update(tps)
        return stored

    def _legacy(self) -> Checkpoint:
        """A checkpoint left by versions that kept it in the state dir (at-least-once)."""
        path = self.ctx.pipeline.state_dir / "checkpoints.db"
        if not path.exists():
            return {}
        store = CheckpointStore(path, self.ctx.flow)
        try:
            return store.load()
        finally:
            store.close()

    def write(self, table: pa.Table, checkpoint: Checkpoint) -> None:
        member = self.ctx.group() if self._claimed else None
        mine = {k: v for k, v in checkpoint.items() if member is not None and k in self._claimed}
        record = {k: v for k, v in checkpoint.items() if k not in mine}
        if not table.num_rows and record == self._committed and mine.items() <= self._sent.items():
            return
        topics = self._topics(table) if self.fields and table.num_rows else None
        if table.num_rows and "_topic" in table.column_names:
            self._refuse_loop(table.column("_topic"), topics)
        self.producer.begin()
        try:
            if table.num_rows:
                if not self.config.keep_provenance:
                    drop = [
                        c for c in ("_topic", "_partition", "_offset") if c in table.column_names
                    ]
                    table = table.drop_columns(drop)
                if topics is None:
                    self._produce(self.config.topic, table)
                else:
                    for topic in pc.unique(topics).to_pylist():
                        self._create(topic)
                        self._produce(topic, table.filter(pc.equal(topics, topic)))
            if record != self._committed:
                self.producer.produce(CHECKPOINT_TOPIC, [orjson.dumps(record)], [self.key])
            if mine and member is not None:
                self.producer.send_offsets({self._claimed[k]: v for k, v in mine.items()}, member)
            self.producer.commit()
        except BaseException:
            try:
                self.producer.abort()
            except Exception:  # the error that stopped the transaction is the one to report
                log.debug("topic sink: abort failed", exc_info=True)
            raise
        self._committed = record
        self._sent.update(mine)

    def _refuse_loop(self, read_from: pa.ChunkedArray, topics: pa.ChunkedArray | None) -> None:
        """Fail if a row would go back to the topic it was read from (a loop)."""
        to = topics if topics is not None else pa.scalar(self.config.topic)
        looped = pc.filter(read_from, pc.fill_null(pc.equal(read_from, to), False))
        if len(looped):
            raise ConfigError(
                f"flow {self.ctx.flow}: the topic sink would write rows back into"
                f" {looped[0].as_py()!r}, the topic they were read from, so each would come"
                " back as a new record forever (write to another topic; for the debezium cdc"
                " engine give the source a topic_prefix of its own, e.g. raw.<prefix>, and"
                " rename the topic in a sql transform)"
            )

    def _create(self, topic: str) -> None:
        if topic not in self.created:
            self.broker.create_topic(topic, self.config.partitions)
            self.created.add(topic)

    def _topics(self, table: pa.Table) -> pa.ChunkedArray:
        """The template rendered per row, vectorized (a NULL field is an error)."""
        for name in self.fields:
            if name not in table.column_names:
                raise ConfigError(
                    f"topic sink: template field {{{name}}} is not a column of the batch "
                    f"(columns: {', '.join(table.column_names)})"
                )
        topics = column_templates.render(self.config.topic, table)
        if topics.null_count:
            raise ConnectorError(f"topic sink: {self.config.topic!r} rendered NULL for some rows")
        return topics

    def _produce(self, topic: str, table: pa.Table) -> None:
        keys = None
        if self.config.key:
            col = table.column(self.config.key).cast(pa.string())
            keys = [k.encode() if k is not None else None for k in col.to_pylist()]
        values = encode_envelopes(table) if self.config.value == "envelope" else encode_json(table)
        self.producer.produce(topic, values, keys)

    def close(self) -> None:
        if hasattr(self, "producer"):  # open() may have failed before connecting
            self.producer.close()


def _partition(key: str) -> tuple[str, int]:
    """``<topic>/<partition>`` -> (topic, partition)."""
    topic, _, partition = key.rpartition("/")
    return topic, int(partition)


def encode_envelopes(table: pa.Table) -> list[bytes]:
    """CDC rows -> Debezium JSON payloads, vectorized in DuckDB.

    ``before``/``after``/``source`` may be JSON strings (cdc source) or structs (topic source).
    """
    fields = ", ".join(
        [f"'{c}', CAST({json_text(table, c)} AS JSON)" for c in ("before", "after", "source")]
        + ["'op', op", "'ts_ms', ts_ms" if "ts_ms" in table.column_names else "'ts_ms', NULL"]
    )
    out = select(table, f"SELECT CAST(json_object({fields}) AS BLOB) FROM batch")
    return out.column(0).to_pylist()  # type: ignore[no-any-return]
