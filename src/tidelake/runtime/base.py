"""What a source, a transform and a sink are.

A flow moves micro-batches (``pyarrow.Table``) from one source, through
transforms, into one sink. Positions travel with the data: every batch carries
the source position after it (a ``Checkpoint``), and the sink stores that
position *atomically with the rows* (docs/architecture.md, principle 1). On restart the runner
asks the sink for its checkpoint and the source resumes from there, so nothing
is lost or written twice.

A new connector is one file: a class with a pydantic ``Config`` (its keys in
the pipeline file) and the methods below, listed in ``tidelake.registry``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from tidelake.vocabulary import PROVENANCE as PROVENANCE  # re-exported for connectors
from tidelake.vocabulary import Checkpoint, ConnectorConfig

if TYPE_CHECKING:
    from tidelake.broker import Broker, Consumer
    from tidelake.config import Pipeline
    from tidelake.runtime.metrics import FlowMetrics


@dataclass
class Batch:
    """A micro-batch and the source position right after it."""

    table: pa.Table
    positions: Checkpoint = field(default_factory=dict)


@dataclass
class FlowContext:
    """What a connector may use from its flow: names, the pipeline, the log, hooks."""

    flow: str
    pipeline: Pipeline
    metrics: FlowMetrics
    broker_factory: Callable[[], Broker]
    dead_letter: Callable[[pa.Table, str | Sequence[str]], None] = lambda rows, reason: None
    """Send rows that cannot be processed to the flow's dead-letter topic, with a reason (or
    one per row); durable when it returns, and nothing for an empty table."""
    flush: Callable[[], None] = lambda: None
    """Write and checkpoint everything in flight now (sources call it on partition revocation)."""
    committed: Callable[[], Checkpoint] = dict
    """The checkpoint the sink holds right now (transforms read their keys back in ``open``)."""
    claim: Callable[[list[str]], Checkpoint] = lambda keys: {}
    """Partitions (``<topic>/<partition>``) assigned to this worker: claims them in the sink
    (``Sink.claim``) and returns the stored checkpoint to resume them from."""
    release: Callable[[list[str]], None] = lambda keys: None
    """Partitions revoked from this worker (after ``flush``): their positions are no longer
    this worker's to store."""
    reads: Callable[[pa.Schema], list[str] | None] = lambda schema: None
    """The columns (dotted paths into structs) the flow reads of a source batch of this
    schema, or None for all: a source may decode only these (``Transform.reads``)."""
    group: Callable[[], Consumer | None] = lambda: None
    """The consumer-group member the flow's source reads with (``Source.group_member``)."""
    worker: str = ""
    """This worker's id when the flow runs as several workers (``--workers``), else empty."""
    _broker: Broker | None = None

    @property
    def owner(self) -> str:
        """``<pipeline>/<flow>``: whose checkpoint it is, in stores several pipelines share."""
        return f"{self.pipeline.name}/{self.flow}"

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            self._broker = self.broker_factory()
        return self._broker


class Source(ABC):
    """Produces batches. Finite sources return ``None`` from ``read`` when exhausted.

    The runner pulls: ``read`` is called only when the flow is ready for the next batch,
    so a slow sink slows reading by itself (no pause/resume needed).
    """

    Config: ClassVar[type[ConnectorConfig]]

    def __init__(self, config: Any) -> None:
        self.config = config

    @abstractmethod
    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        """Start reading right after ``checkpoint`` (empty: from the beginning)."""

    @abstractmethod
    def read(self, max_records: int, timeout: float) -> Batch | None:
        """Up to ``max_records`` rows, waiting at most ``timeout`` s; an empty table when
        nothing arrived; ``None`` once a finite source has nothing more to give."""

    def committed(self, checkpoint: Checkpoint) -> None:  # noqa: B027 - optional hook
        """The sink durably stored ``checkpoint``: acknowledge upstream (commit offsets, LSN)."""

    def group_member(self) -> Consumer | None:
        """The consumer-group member this source reads with, if any (topic sources): a sink
        writing to the same log commits its group offsets inside its transactions."""
        return None

    def close(self) -> None:  # noqa: B027
        """Release resources."""


class Transform(ABC):
    """A vectorized function from batch to batch (never a per-record Python loop)."""

    Config: ClassVar[type[ConnectorConfig]]
    stateless: ClassVar[bool] = True
    """Each call depends only on its batch, so the runner may re-run it on parts of a batch
    to find the rows it fails on. Transforms keeping rows across batches set False."""

    @classmethod
    def takes_several_workers(cls, config: ConnectorConfig) -> bool:
        """Whether N workers of a flow, each given some partitions, together equal one worker
        (``workers``): true of stateless transforms and of state kept per source partition."""
        return cls.stateless

    def __init__(self, config: Any) -> None:
        self.config = config

    def open(self, ctx: FlowContext) -> None:  # noqa: B027
        """Prepare (compile SQL, read keys from the environment, ...); fail fast on bad config."""

    def claim(self, keys: list[str], stored: Checkpoint) -> None:  # noqa: B027
        """Partitions (``<topic>/<partition>``) assigned to this worker, with the checkpoint
        the sink holds: state kept per partition restarts from it (the source re-reads from
        its stored position). Default: nothing."""

    def release(self, keys: list[str]) -> None:  # noqa: B027
        """Partitions revoked from this worker, after their last flush: drop what is held of
        them (their next owner rebuilds it). Default: nothing."""

    @abstractmethod
    def __call__(self, table: pa.Table) -> pa.Table:
        """Return the transformed batch; rows routed to ``ctx.dead_letter`` are left out."""

    def reads(self, schema: pa.Schema) -> list[str] | None:
        """The input columns (dotted paths into structs) this transform reads of a batch of
        ``schema``, or None when it may read any (default). Sources decode only these when
        it is a flow's first transform."""
        return None

    def checkpoint(self, positions: Checkpoint) -> Checkpoint:
        """The checkpoint to store with what lands now, given the source positions after it.

        A transform keeping rows in memory across batches (``window``) lowers the positions
        of those rows, so a restarted flow re-reads them, and may add keys of its own
        (read back through ``ctx.committed()`` in ``open``). Default: unchanged."""
        return positions

    def finish(self) -> pa.Table:
        """The source ended: rows still held in memory, to land now (default: none)."""
        return pa.table({})


class Sink(ABC):
    """Lands batches and owns the flow's checkpoint.

    The runner fences: rows below the stored position of their partition never reach
    ``write`` (``runtime.positions``). A sink only stores and returns positions."""

    Config: ClassVar[type[ConnectorConfig]]
    several_writers: ClassVar[bool] = False
    """Several workers of one flow may write at once: ``claim`` makes partitions this
    worker's and ``write`` refuses, in the same commit as the rows, the batch of a worker
    that lost them since (partition epochs, ``positions.merge``; the topic sink: the
    consumer group's ownership, checked by the log)."""

    commits_group_offsets: ClassVar[bool] = False
    """The sink commits a topic source's consumer-group offsets inside its own transactions
    (``FlowContext.group``), so the source must not commit them again outside them."""

    @classmethod
    def takes_several_writers(cls, config: ConnectorConfig, pipeline: Pipeline) -> bool:
        """Whether this sink, so configured, may have several writers (``several_writers``)."""
        return cls.several_writers

    def __init__(self, config: Any) -> None:
        self.config = config

    @abstractmethod
    def open(self, ctx: FlowContext) -> None:
        """Connect; create what is missing."""

    @abstractmethod
    def checkpoint(self) -> Checkpoint:
        """The position stored with the last committed write for this flow (empty if none)."""

    @abstractmethod
    def write(self, table: pa.Table, checkpoint: Checkpoint) -> None:
        """Land ``table`` and store ``checkpoint`` atomically: after a crash either both are
        visible or neither. ``checkpoint`` holds the positions this worker owns (and the
        epochs it claimed them with); stored keys it does not carry stay as they are."""

    def claim(self, keys: list[str]) -> Checkpoint:
        """Claim partitions for this worker, durably, and return the stored checkpoint.

        Default: nothing stored (one writer per flow). Sinks with ``several_writers`` bump
        the partitions' epochs (``positions.claim``) so a worker that lost them cannot
        commit any more."""
        return self.checkpoint()

    def close(self) -> None:  # noqa: B027
        """Release resources."""
