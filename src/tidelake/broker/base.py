"""The log contract shared by every backend.

Guarantees every backend gives (the contract tests in tests/ check them):
- offsets in a partition are dense, start at 0 and never change;
- records with the same key go to the same partition, so per-key order holds;
- consumers of one group split the partitions of their topics between them;
- a consumer resumes from its group's committed offset (or the start when none);
- ``on_revoke`` runs before a partition is handed to another member, so a sink
  can flush and checkpoint what it holds for that partition.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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

    def close(self) -> None:
        self.flush()


class Consumer(ABC):
    @abstractmethod
    def poll(self, max_records: int, timeout: float) -> MessageBatch:
        """Up to ``max_records`` records from the assigned partitions; empty after ``timeout``."""

    @abstractmethod
    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Store ``offsets`` (the next offset to read) as the group's position."""

    @abstractmethod
    def seek(self, offsets: dict[TopicPartition, int]) -> None:
        """Continue reading the given assigned partitions from these offsets."""

    @abstractmethod
    def assignment(self) -> list[TopicPartition]:
        """The partitions this member currently owns."""

    @abstractmethod
    def lag(self) -> int:
        """Records in the assigned partitions not yet read by this consumer."""

    def pause(self) -> None:  # noqa: B027 - optional: backends that prefetch stop here
        """Stop fetching ahead (backpressure); ``poll`` still returns buffered data."""

    def resume(self) -> None:  # noqa: B027
        """Undo ``pause``."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group; its partitions go to the remaining members."""


class Broker(ABC):
    """A log: named topics of partitions of records."""

    url: str

    @abstractmethod
    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create ``name`` if missing (idempotent)."""

    @abstractmethod
    def topics(self) -> dict[str, int]:
        """Topic name -> partition count."""

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Partition -> offset the next record will get."""

    @abstractmethod
    def producer(self) -> Producer: ...

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
