"""`tidelake demo markets` watched in headless Chromium, with its schedules running.

The demo runs as a user runs it (one process on free ports, in a copy of the scenario),
polling a market API whose clock runs 30 times as fast as the wall clock (a 1-minute candle
every 2 s), with the end-of-day summary due every 3 s and compaction every 5 s (cron's
sixth field: seconds).

- The candlestick panel draws one chart per symbol. Every candle drawn (the OHLC Vega writes
  into each body's aria-label) is a candle of ``lake.candles``, no minute is missing between
  the first and the last drawn, a body is green when it closed up, and each chart has its
  two moving averages over it; every panel's scales are right (``read_drawn``). Two looks
  a few seconds apart, without a reload, show more candles and other pixels.
- The console prints each schedule's last and next run and ``/api/flows`` shows them. Once
  the market API stops and the candles are final, the next end-of-day run's
  ``daily_summary`` equals a pandas reference over those candles; compaction ran.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pytest
from browser import Browser, Demo, free_port, wait_for
from PIL import ImageChops
from scenario_panels import read_drawn

from tidelake.config import load
from tidelake.demo import _Server
from tidelake.demo.market_api import INSTRUMENTS, create_app
from tidelake.lake import QueryEngine, checkpoints
from tidelake.lake.catalog import load_table

pytestmark = pytest.mark.integration

CHARTS = ".st-key-panel-0 [data-testid=stVegaLiteChart]"
UP, DOWN = "#26a69a", "#ef5350"
LOOK = f"""Array.from(document.querySelectorAll({json.dumps(CHARTS)})).map(c => ({{
  symbol: c.querySelector('.role-title-text')?.textContent,
  bodies: Array.from(c.querySelectorAll('.mark-rect.role-mark path'))
    .map(p => [p.getAttribute('aria-label'), p.getAttribute('fill')]),
  wicks: c.querySelectorAll('.mark-rule.role-mark line').length,
  lines: c.querySelectorAll('.mark-line.role-mark path').length}}))"""
SYMBOLS = sorted(i.symbol for i in INSTRUMENTS)
OHLC = ("open", "high", "low", "close")


def drawn(browser: Browser) -> dict[str, list[dict[str, object]]]:
    """Per chart title (a symbol): its candles as drawn ({minute, open, ..., fill})."""
    out: dict[str, list[dict[str, object]]] = {}
    for chart in browser.js(LOOK):
        assert chart["wicks"] == len(chart["bodies"]), "a wick per candle"
        assert chart["lines"] == 2, "the 1- and 5-minute moving averages over the candles"
        candles = []
        for label, fill in chart["bodies"]:
            fields = dict(part.split(": ", 1) for part in label.split("; "))
            values = {k: float(fields[k].replace(",", "")) for k in OHLC}
            minute = fields["minute"]  # the axis's format: HH:MM:SS over a few minutes, or HH:MM
            candles.append({"minute": f"{minute}:00"[:8], **values, "fill": fill})
        out[chart["symbol"]] = candles
    return out


def enough(browser: Browser, candles: int) -> dict[str, list[dict[str, object]]] | None:
    look = drawn(browser)
    return (
        look if sorted(look) == SYMBOLS and all(len(c) >= candles for c in look.values()) else None
    )


def lake_candles(path: Path) -> pd.DataFrame:
    with QueryEngine(load(path)) as engine:
        return engine.sql(
            "SELECT symbol, window_start, strftime(window_start::TIMESTAMP, '%H:%M:%S') AS minute, "
            "open, high, low, close, volume, trades, vwap FROM lake.candles"
        ).to_pandas()


def check_candles(look: dict[str, list[dict[str, object]]], lake: pd.DataFrame) -> None:
    """Each drawn candle is the lake's, none is missing in the drawn span, colours right."""
    for symbol, candles in look.items():
        mine = lake[lake.symbol == symbol].sort_values("window_start").set_index("minute")
        minutes = [c["minute"] for c in candles]
        span = mine.loc[minutes[0] : minutes[-1]]
        assert minutes == list(span.index), f"{symbol}: drawn {minutes}, lake {list(span.index)}"
        for c in candles:
            row = mine.loc[str(c["minute"])]
            for k in OHLC:
                assert c[k] == pytest.approx(row[k], abs=0.005), (symbol, c, row)
            assert c["fill"] == (UP if row.close >= row.open else DOWN), (symbol, c)


def reference_summary(candles: pd.DataFrame) -> pd.DataFrame:
    c = candles.sort_values(["symbol", "window_start"]).assign(
        day=candles.window_start.dt.date, pv=candles.vwap * candles.volume
    )
    g = c.groupby(["symbol", "day"])
    return pd.DataFrame(
        {
            "open": g.open.first(),
            "high": g.high.max(),
            "low": g.low.min(),
            "close": g.close.last(),
            "volume": g.volume.sum(),
            "trades": g.trades.sum(),
            "vwap": g.pv.sum() / g.volume.sum(),
        }
    ).reset_index()


def test_demo_markets_candles_live_and_schedules_run(tmp_path: Path, browser: Browser) -> None:
    api, dashboard, market = free_port(), free_port(), free_port()
    feed = _Server(create_app(rate=4.0, seed=5, speed=30.0), market)
    feed.start()
    feed.wait_ready()
    env = {
        "MARKET_API": f"http://127.0.0.1:{market}",
        "EOD_CRON": "* * * * * */3",
        "COMPACT_CRON": "* * * * * */5",
    }
    demo = Demo("markets", tmp_path / "markets", api, dashboard, env=env)
    path = tmp_path / "markets" / "pipeline.yaml"
    try:
        demo.show(browser)
        first_look = wait_for(lambda: enough(browser, 3), 120, "3 candles for every symbol")
        browser.js("window.__not_reloaded = true")
        first = browser.screenshot(CHARTS)
        # counted after the screenshot: a candle drawn in between counts, so the second look
        # waits for one the first screenshot cannot hold
        count = {s: len(c) for s, c in (enough(browser, 3) or first_look).items()}
        check_candles(first_look, lake_candles(path))
        read_drawn(browser, load(path))  # every panel's scales, the heatmap and top movers too

        second_look = wait_for(
            lambda: (
                (look := enough(browser, 3)) and all(len(look[s]) > count[s] for s in look) and look
            ),
            60,
            "a new candle for every symbol",
        )
        second = browser.screenshot(CHARTS)
        assert browser.js("window.__not_reloaded") is True, "updates must not reload the page"
        assert first.size != second.size or ImageChops.difference(first, second).getbbox(), (
            "the candlestick chart looks the same after new candles landed"
        )
        check_candles(second_look, lake_candles(path))

        with httpx.Client(base_url=f"http://127.0.0.1:{api}", timeout=30) as client:
            flows = {f["flow"]: f for f in client.get("/api/flows").json()}
        eod, compaction = flows["daily_summary"], flows["compact ticks, candles, averages"]
        assert (eod["schedule"], eod["cron"]) == ("end_of_day", "* * * * * */3"), eod
        assert compaction["schedule"] == "compaction" and compaction["state"] == "scheduled"
        for job in (eod, compaction):
            assert job["last_run"] < job["next_run"] <= job["last_run"] + 6, job

        feed.stop()  # the market closes: the candles become final
        state = path.parent / ".tidelake"
        candles, quiet_since = lake_candles(path), time.time()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1)
            now = lake_candles(path)
            if len(now) != len(candles) or now.trades.sum() != candles.trades.sum():
                candles, quiet_since = now, time.time()
                continue
            jobs = {j["schedule"]: j for j in orjson.loads((state / "schedules.json").read_bytes())}
            if (
                time.time() - quiet_since > 5
                and (jobs["end_of_day"]["last_run"] or 0) > quiet_since
            ):
                break
        else:
            raise AssertionError("the candles did not settle, or no end-of-day run followed")
        assert not jobs["end_of_day"]["last_error"] and not jobs["compaction"]["last_error"], jobs
        with QueryEngine(load(path)) as engine:
            summary = engine.sql("SELECT * FROM lake.daily_summary").to_pandas()
        key = ["symbol", "day"]
        got = summary.sort_values(key).reset_index(drop=True)
        want = reference_summary(candles).sort_values(key).reset_index(drop=True)
        assert sorted(got.symbol.unique()) == SYMBOLS
        pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)
        compacted = [
            s.summary.additional_properties.get(checkpoints.MAINTENANCE) == "compact"
            for s in load_table(load(path), "candles").snapshots()
            if s.summary
        ]
        assert any(compacted), "compaction rewrote no file of lake.candles"

        lines = [ln for ln in demo.output.splitlines() if ln.startswith("schedule ")]
        assert (
            "schedule end_of_day: daily_summary at '* * * * * */3'; not yet run; next" in (lines[0])
        ), lines
        ran = [
            ln for ln in lines if re.search(r"end_of_day: .*; last run \S+ \(run \d+\); next", ln)
        ]
        assert ran, "the console shows each run's last and next run"
    finally:
        code = demo.interrupt()
        feed.stop()
    assert code == 0, demo.output
