"""What every route of one API app shares: the pipeline, its engine pool and limits, the
request statistics and a lazily connected writer for ingest and forms."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tidelake.broker import Writer
from tidelake.config import Pipeline
from tidelake.serve import prometheus
from tidelake.serve.engine import EnginePool, Limits


@dataclass
class ApiState:
    pipeline: Pipeline
    pool: EnginePool
    limits: Limits
    max_body: int
    stats: prometheus.RequestStats
    writer: Writer = field(init=False)

    def __post_init__(self) -> None:
        self.writer = Writer(self.pipeline.url(self.pipeline.broker))

    def produce(self, topic: str, values: list[bytes]) -> None:
        self.writer.write(topic, values)

    async def append(self, topic: str, values: list[bytes]) -> None:
        """``produce`` without holding a thread: done once the records are durable (their
        group's log transaction committed; ``broker.writer``)."""
        await asyncio.wrap_future(self.writer.submit(topic, values))

    def close(self) -> None:
        self.pool.close()
        self.writer.close()
