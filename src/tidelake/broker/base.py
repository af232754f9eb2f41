"""The log contract shared by every backend.

Guarantees every backend gives (the contract tests in tests/ check them):
- offsets in a partition start at 0, only grow and never change; records of plain
  producers get dense offsets (Kafka's transaction markers and aborted records take
  offsets of their own, so a partition written in transactions has gaps there);
- records with the same key go to the same partition, so per-key order holds;
- consumers of one group split the partitions of their topics between them;
- a consumer resumes from its group's committed offset (or the start when none);
- ``on_revoke`` runs before a partition is handed to another member, so a sink
  can flush and checkpoint what it holds for that partition;
- transactions: what a :class:`TransactionalProducer` produces between ``begin`` and
  ``commit`` becomes visible to consumers all at once, on every topic it touched, or
  (``abort``, a crash) never; consumers only ever read committed records. Opening a
  transactional producer fences every earlier one with the same transactional id: their
  open transaction is aborted and their later ``commit`` raises;
- compacted topics (``create_topic(..., config={"cleanup.policy": "compact"})``) keep at
  least the last record of every key, and ``latest`` returns it.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

TopicPartition = tuple[str, int]
RebalanceCallback = Callable[[list[TopicPartition]], None]


@dataclass
class MessageBatch:
    """Records polled at once, column by column (no per-record objects downstream)."""

    topics: list[str] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)

    def extend(self, other: MessageBatch) -> None:
        self.topics += other.topics
        self.partitions += other.partitions
        self.offsets += other.offsets
        self.timestamps += other.timestamps
        self.keys += other.keys
        self.values += other.values

    def next_offsets(self) -> dict[TopicPartition, int]:
        """The position after this batch, per partition (what a checkpoint stores)."""
        if not self.offsets:
            return {}
        topic, n = self.topics[0], len(self)
        if self.topics.count(topic) == n:  # one topic: the highest offset per partition at once
            rows = pa.table({"p": pa.array(self.partitions, pa.int64()),
                             "o": pa.array(self.offsets, pa.int64())})  # fmt: skip
            top = rows.group_by("p").aggregate([("o", "max")]).to_pydict()
            return {(topic, p): o + 1 for p, o in zip(top["p"], top["o_max"], strict=True)}
        out: dict[TopicPartition, int] = {}
        for t, p, o in zip(self.topics, self.partitions, self.offsets, strict=True):
            if o + 1 > out.get((t, p), -1):
                out[(t, p)] = o + 1
        return out


def partition_for(key: bytes | None, partitions: int, counter: int) -> int:
    """Keyed records hash to a fixed partition; unkeyed records round-robin."""
    if key is None:
        return counter % partitions
    return zlib.crc32(key) % partitions


class Producer(ABC):
    @abstractmethod
    def produce(
        self, topic: str, values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None
    ) -> None:
        """Append records (in order) to ``topic``; keyed records go to their key's partition."""

    @abstractmethod
    def flush(self, timeout: float = 30.0) -> None:
        """Block until every produced record is durable in the log."""

    atomic_batches = False
    """True when ``produce_batches`` lands all of its batches or none of them."""

    def produce_batches(self, batches: Sequence[tuple[str, Sequence[bytes]]]) -> None:
        """Append each (topic, values) batch in order, each batch's records contiguous per
        partition, then ``flush``; one log transaction where ``atomic_batches``."""
        for topic, values in batches:
            self.produce(topic, values)
        self.flush()

    def close(self) -> None:
        self.flush()


class TransactionalProducer(ABC):
    """Produces in atomic transactions: ``begin``, ``produce`` ..., then ``commit`` or ``abort``.

    Single-writer per ``transactional_id``: a newer producer with the same id fences this
    one, whose ``commit`` then raises :class:`~tidelake.errors.ConnectorError`.
    """

    transactional_id: str

    @abstractmethod
    def begin(self) -> None:
        """Start a transaction (none may be open)."""

    @abstractmethod
    def produce(
        self, topic: str, values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None
    ) -> None:
        """Append records to ``topic`` inside the open transaction (as ``Producer.produce``)."""

    @abstractmethod
    def send_offsets(self, offsets: dict[TopicPartition, int], consumer: Consumer) -> None:
        """Commit ``consumer``'s group offsets with the open transaction (Kafka's KIP-447).

        The log checks, inside the transaction, that ``consumer`` still owns the partitions
        in its group (Kafka: the group generation; the embedded log: the ``owners`` table);
        when the group gave one to another member since, nothing of the transaction can
        commit and :class:`~tidelake.errors.Fenced` is raised here or from ``commit``.
        """

    @abstractmethod
    def commit(self) -> None:
        """Make everything produced since ``begin`` durable and visible, atomically.

        Raises ``ConnectorError`` when the transaction could not commit (fenced by a newer
        producer, timed out, a record was refused): then none of it is visible.
        """

    @abstractmethod
    def abort(self) -> None:
        """Drop everything produced since ``begin``; nothing of it becomes visible."""

    @abstractmethod
    def close(self) -> None:
        """Abort an open transaction and release the connection."""


class Consumer(ABC):
    @abstractmethod
    def poll(self, max_records: int, timeout: float) -> MessageBatch:
        """Up to ``max_records`` records from the assigned partitions; empty after ``timeout``."""

    @abstractmethod
    def commit(self, offsets: dict[TopicPartition, int], wait: bool = True) -> None:
        """Store ``offsets`` (the next offset to read) as the group's position.

        ``wait=False`` sends them and returns (Kafka: an asynchronous commit, its failure
        logged): for advisory commits, which must never hold up a flow while the group
        coordinator is away."""

    @abstractmethod
    def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's stored offsets of ``partitions`` (those without one are left out).

        Offsets a transaction still being decided carries (``send_offsets``) are waited for
        (Kafka: OffsetFetch with require_stable under read_committed), so what is returned
        is final."""

    @abstractmethod
    def seek(self, offsets: dict[TopicPartition, int]) -> None:
        """Continue reading the given assigned partitions from these offsets."""

    @abstractmethod
    def assignment(self) -> list[TopicPartition]:
        """The partitions this member currently owns."""

    @abstractmethod
    def lag(self) -> int:
        """Records in the assigned partitions not yet read by this consumer."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group; its partitions go to the remaining members."""


class Broker(ABC):
    """A log: named topics of partitions of records."""

    url: str

    @abstractmethod
    def create_topic(
        self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> None:
        """Create ``name`` if missing (idempotent; an existing topic is left as it is).

        ``config``: Kafka topic settings. Every backend understands ``cleanup.policy``
        (``delete`` or ``compact``) and ``retention.ms``; Kafka takes the others too.
        """

    @abstractmethod
    def topics(self) -> dict[str, int]:
        """Topic name -> partition count."""

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Partition -> offset the next record will get."""

    @abstractmethod
    def producer(self) -> Producer: ...

    @abstractmethod
    def transactional_producer(self, transactional_id: str) -> TransactionalProducer:
        """A producer of atomic transactions; fences earlier ones with the same id."""

    @abstractmethod
    def latest(
        self, topic: str, keys: Sequence[bytes], timeout: float = 120.0
    ) -> dict[bytes, bytes]:
        """The value of the last committed record of each of ``keys`` in ``topic`` (keys
        without a record are left out), read in one pass.

        Meant for small compacted topics: Kafka reads the topic to its end (read_committed,
        waiting for open transactions of other producers to finish, up to ``timeout`` s).
        """

    @abstractmethod
    def consumer(
        self,
        group: str,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> Consumer: ...

    def close(self) -> None:  # noqa: B027
        """Release connections."""
