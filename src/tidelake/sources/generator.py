"""``generator``: synthetic, deterministic records (ratings, transactions, logs, profiles, ...).

Guarantees: with the same ``kind`` and ``seed``, record ``seq`` is always the
same (every column but ``ts`` when ``rate`` is set, whose event time is the
wall clock). The position is ``{"seq": n}`` = records emitted, so a flow
restarted from its sink's checkpoint continues with exactly the records an
uninterrupted run would have produced next.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tidelake.runtime.base import Batch, Checkpoint, ConnectorConfig, FlowContext, Source
from tidelake.sources.kinds import KINDS, TS_TYPE, Blocks, KindName

DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)

__all__ = ["KINDS", "GeneratorSource", "generate"]


def generate(
    kind: str,
    start_seq: int,
    n: int,
    seed: int = 42,
    *,
    start: datetime = DEFAULT_START,
    interval: float = 1.0,
) -> pa.Table:
    """Records ``start_seq .. start_seq+n-1`` of ``kind``: a pure function of its arguments.

    ``ts`` of record ``seq`` is ``start + seq * interval`` seconds.
    """
    return Blocks(kind, seed, start, interval).rows(start_seq, n)


class GeneratorSource(Source):
    """Faker-flavoured records generated in vectorized blocks, optionally rate-limited."""

    class Config(ConnectorConfig):
        type: Literal["generator"]
        kind: KindName = Field(description="what to generate: " + ", ".join(KINDS))
        seed: int = Field(42, description="same seed, same records")
        rate: float | None = Field(
            None, ge=0, description="records per second (unset or 0: as fast as possible)"
        )
        limit: int | None = Field(
            None, ge=0, description="total records, then stop (unset: endless)"
        )
        start: datetime = Field(
            DEFAULT_START, description="event time (ts) of record 0 when rate is unset"
        )
        interval: float = Field(
            1.0, gt=0, description="seconds of event time between records when rate is unset"
        )

    config: Config

    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        c = self.config
        start = c.start if c.start.tzinfo else c.start.replace(tzinfo=UTC)
        self.blocks = Blocks(c.kind, c.seed, start, c.interval)
        self.seq = checkpoint.get("seq", 0)
        self._t0 = time.monotonic()
        self._wall0_us = time.time_ns() // 1000
        self._emitted = 0

    def read(self, max_records: int, timeout: float) -> Batch | None:
        c = self.config
        n = max_records
        if c.limit is not None:
            if self.seq >= c.limit:
                return None
            n = min(n, c.limit - self.seq)
        if c.rate:
            due = self._due()
            if due <= 0:
                wait = (self._emitted + 1) / c.rate - (time.monotonic() - self._t0)
                time.sleep(max(0.0, min(timeout, wait)))
                due = self._due()
            n = min(n, due)
        if n <= 0:
            return Batch(pa.table({}))
        table = self.blocks.rows(self.seq, n)
        if c.rate:
            table = self._wall_clock(table, n)
        self.seq += n
        self._emitted += n
        return Batch(table, {"seq": self.seq})

    def _due(self) -> int:
        assert self.config.rate
        return int((time.monotonic() - self._t0) * self.config.rate) - self._emitted

    def _wall_clock(self, table: pa.Table, n: int) -> pa.Table:
        """``ts`` = when each record was scheduled: open time + its index / rate."""
        assert self.config.rate
        step_us = 1_000_000 / self.config.rate
        offsets = pc.multiply(pc.cast(pa.array(range(n), pa.int64()), pa.float64()), step_us)
        first = self._wall0_us + self._emitted * step_us
        micros = pc.floor(pc.add(offsets, first))  # whole microseconds: the cast is exact
        ts = pc.cast(pc.cast(micros, pa.int64()), TS_TYPE)
        return table.set_column(table.column_names.index("ts"), "ts", ts)
