"""The markets scenario's market API: ``GET /ticks`` returns the trades made since the last call.

It stands in for the exchange feeds of the reference architecture (the one part outside
tidelake). A few stocks and two crypto pairs move as seeded random walks: each trade's price
is a log-normal step from the last one, rounded to the instrument's tick size, with a volume
in its lot size; now and then a symbol has a burst (a few seconds of several times the trade
rate and volatility), which is what the anomaly alerts catch. Trades carry a ``trade_id``
(increasing, so a re-polled trade is recognised) and an event time ``ts`` in epoch ms.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass

from fastapi import FastAPI, Query


@dataclass(frozen=True)
class Instrument:
    symbol: str
    price: float  # where the walk starts
    tick: float  # price increment
    lot: float  # volume increment
    volatility: float  # standard deviation of one trade's log return
    weight: float  # share of all trades


INSTRUMENTS = (
    Instrument("AAPL", 189.5, 0.01, 1, 0.00006, 1.0),
    Instrument("MSFT", 415.2, 0.01, 1, 0.00005, 0.8),
    Instrument("NVDA", 121.3, 0.01, 1, 0.00009, 1.2),
    Instrument("TSLA", 242.8, 0.01, 1, 0.0001, 1.0),
    Instrument("BTC-USD", 64_250.0, 0.01, 0.0001, 0.00008, 1.6),
    Instrument("ETH-USD", 3_410.0, 0.01, 0.001, 0.0001, 1.4),
)
BURST = 6.0
"""During a burst a symbol trades and moves this many times faster."""


class Market:
    """The seeded market: ``trades(until_ms)`` returns every trade up to that time, once."""

    def __init__(self, rate: float, seed: int, start_ms: int) -> None:
        self.rng = random.Random(seed)
        self.rate, self.clock, self.next_id = rate, start_ms, 1
        self.prices = {i.symbol: i.price for i in INSTRUMENTS}
        self.burst_until = {i.symbol: 0 for i in INSTRUMENTS}
        self.weights = [i.weight for i in INSTRUMENTS]

    def trades(self, until_ms: int, limit: int) -> list[dict[str, float | int | str]]:
        out: list[dict[str, float | int | str]] = []
        while len(out) < limit:
            bursting = sum(1 for end in self.burst_until.values() if end > self.clock)
            gap = self.rng.expovariate(self.rate * (1 + bursting * (BURST - 1) / 6)) * 1000
            if self.clock + gap > until_ms:
                break
            self.clock += max(1, round(gap))
            out.append(self._trade(gap))
        return out

    def _trade(self, gap_ms: float) -> dict[str, float | int | str]:
        rng = self.rng
        inst = rng.choices(INSTRUMENTS, self.weights)[0]
        if rng.random() < gap_ms / 30_000:  # a burst every 30 s of market time on average
            self.burst_until[inst.symbol] = self.clock + rng.randint(3000, 8000)
        scale = BURST if self.burst_until[inst.symbol] > self.clock else 1.0
        drift = rng.gauss(0.0, inst.volatility * scale)
        price = max(
            inst.tick, round(self.prices[inst.symbol] * math.exp(drift) / inst.tick) * inst.tick
        )
        self.prices[inst.symbol] = price
        lots = max(1, round(rng.lognormvariate(3.0, 1.0) * scale))
        trade: dict[str, float | int | str] = {
            "trade_id": self.next_id,
            "symbol": inst.symbol,
            "price": round(price, 2),
            "volume": round(lots * inst.lot, 4),
            "ts": self.clock,
        }
        self.next_id += 1
        return trade


def create_app(rate: float = 50.0, seed: int = 7, speed: float = 1.0) -> FastAPI:
    """``rate`` trades per market second; the market's clock runs ``speed`` times as fast as
    the wall clock (tests see an hour of candles in minutes), starting now."""
    app = FastAPI(title="Market data API (tidelake demo)")
    started = time.time()
    market = Market(rate, seed, int(started * 1000))
    lock = threading.Lock()

    @app.get("/ticks", summary="Trades made since the previous call (at most `limit`)")
    def ticks(limit: int = Query(5000, ge=1, le=50_000)) -> list[dict[str, float | int | str]]:
        with lock:
            return market.trades(int((started + (time.time() - started) * speed) * 1000), limit)

    return app
