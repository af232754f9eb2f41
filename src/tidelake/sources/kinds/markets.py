"""``stock_ticks``: prices that random-walk continuously across blocks, yet any block is
computable on its own.

Rows cycle through the symbols (``seq % len(SYMBOLS)``). Each symbol's log
price is pinned at every block boundary to an *anchor* (a mean-reverting
walk, one step per block, from a seeded sequential generator); inside a block
it follows a Brownian bridge between the two anchors. So price paths have no
jumps at block edges, and block ``k`` needs only anchors ``k`` and ``k+1``.
"""

from __future__ import annotations

import math
import random

import pyarrow as pa
import pyarrow.compute as pc

from tidelake.sources.kinds.events import Columns
from tidelake.sources.kinds.rand import BLOCK, Block, arange, derive_seed, to_int

SYMBOLS = {  # symbol -> long-run price
    "AAPL": 190.0,
    "MSFT": 410.0,
    "GOOG": 150.0,
    "AMZN": 180.0,
    "TSLA": 220.0,
    "NVDA": 880.0,
    "BTC-USD": 64_000.0,
    "ETH-USD": 3_200.0,
}
_TICKS = BLOCK // len(SYMBOLS)  # ticks per symbol per block
_SIGMA = 0.0008  # per-tick volatility of the log price
_REVERSION = 0.02  # pull of the anchors toward the long-run price, per block
_ORDER = pc.add(
    pc.multiply(pc.bit_wise_and(arange(0, BLOCK), len(SYMBOLS) - 1), _TICKS),
    pc.shift_right(arange(0, BLOCK), int(math.log2(len(SYMBOLS)))),
)
"""Row ``j`` of a block takes tick ``j // n`` of symbol ``j % n`` from the per-symbol paths."""
_anchors: dict[tuple[int, str], tuple[random.Random, list[float]]] = {}


def anchor(seed: int, symbol: str, k: int) -> float:
    """Log price of ``symbol`` at the start of block ``k`` (extends a cached walk as needed)."""
    key = (seed, symbol)
    if key not in _anchors:
        _anchors[key] = (random.Random(derive_seed(seed, symbol)), [math.log(SYMBOLS[symbol])])
    rng, walk = _anchors[key]
    mean, step = math.log(SYMBOLS[symbol]), _SIGMA * math.sqrt(_TICKS)
    while len(walk) <= k:
        last = walk[-1]
        walk.append(last + _REVERSION * (mean - last) + rng.gauss(0.0, step))
    return walk[k]


def stock_ticks(b: Block) -> Columns:
    paths = []
    frac = pc.divide(pc.cast(arange(1, _TICKS), pa.float64()), float(_TICKS))
    for symbol in SYMBOLS:
        start, end = anchor(b.seed, symbol, b.index), anchor(b.seed, symbol, b.index + 1)
        steps = b.normal(f"walk.{symbol}", 0.0, _SIGMA).slice(0, _TICKS)
        walk = pc.cumulative_sum(steps)
        drift = pc.multiply(frac, end - start - walk[-1].as_py())
        paths.append(pc.exp(pc.add(pc.add(walk, drift), start)))
    prices = pc.take(pa.concat_arrays(paths), _ORDER)
    return {
        "symbol": pc.take(pa.array(list(SYMBOLS)), pc.bit_wise_and(b.seq, len(SYMBOLS) - 1)),
        "price": pc.round(prices, 2),
        "volume": pc.add(to_int(b.lognormal("volume", 300.0, 1.1)), 1),
    }
