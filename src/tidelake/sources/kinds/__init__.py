"""Record kinds the ``generator`` source can produce, and the block-wise generation behind it.

Record ``seq`` of a kind is a pure function of ``(kind, seed, seq)`` (plus the
event-time settings): data is generated in fixed blocks of ``BLOCK`` records,
each seeded by its index, so generating records ``[a, b)`` gives the same rows
whether done in one call or many.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc

from tidelake.sources.kinds.events import (
    ad_campaigns,
    movie_ratings,
    social_posts,
    transactions,
    warehouse_ops,
    web_logs,
)
from tidelake.sources.kinds.markets import stock_ticks
from tidelake.sources.kinds.people import user_profiles
from tidelake.sources.kinds.rand import BLOCK, Block, arange

KindName = Literal[
    "movie_ratings",
    "transactions",
    "web_logs",
    "social_posts",
    "ad_campaigns",
    "user_profiles",
    "stock_ticks",
    "warehouse_ops",
]
KINDS: dict[str, Callable[[Block], dict[str, pa.Array]]] = {
    "movie_ratings": movie_ratings,
    "transactions": transactions,
    "web_logs": web_logs,
    "social_posts": social_posts,
    "ad_campaigns": ad_campaigns,
    "user_profiles": user_profiles,
    "stock_ticks": stock_ticks,
    "warehouse_ops": warehouse_ops,
}
assert set(KINDS) == set(get_args(KindName))

TS_TYPE = pa.timestamp("us", tz="UTC")


class Blocks:
    """Generates records by block, keeping the last block so sequential reads cost nothing extra."""

    def __init__(self, kind: str, seed: int, start: datetime, interval: float) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} (choose one of: {', '.join(KINDS)})")
        self.kind, self.seed, self.build = kind, seed, KINDS[kind]
        self.start_us = int(start.timestamp() * 1_000_000)
        self.interval_us = round(interval * 1_000_000)
        self._cached: tuple[int, pa.Table] | None = None

    def block(self, index: int) -> pa.Table:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        seq = arange(index * BLOCK, BLOCK)
        ts_us = pc.add(pc.multiply(seq, self.interval_us), self.start_us)
        columns = self.build(Block(self.seed, self.kind, index, ts_us))
        columns["ts"] = pc.cast(ts_us, TS_TYPE)
        table = pa.table(columns)
        self._cached = (index, table)
        return table

    def rows(self, start_seq: int, n: int) -> pa.Table:
        """Records ``start_seq .. start_seq+n-1``."""
        if start_seq < 0 or n < 0:
            raise ValueError("start_seq and n must be >= 0")
        parts: list[pa.Table] = []
        seq, end = start_seq, start_seq + n
        while seq < end or not parts:
            index, offset = divmod(seq, BLOCK)
            take = min(BLOCK - offset, end - seq)
            parts.append(self.block(index).slice(offset, take))
            seq += take
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts).combine_chunks()
