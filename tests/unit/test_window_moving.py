"""Sliding, moving and session windows equal a brute-force reference over random
out-of-order input (hypothesis), in random batches and across a crash and restart at a
random checkpoint; late rows are dead-lettered."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidelake.config import Pipeline
from tidelake.errors import ConfigError
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.transforms.window import Window

BASE = 1_700_000_000_000
LATENESS = 2000
Row = dict[str, Any]


def window(stored: dict[str, int] | None = None, **cfg: object) -> tuple[Window, list[pa.Table]]:
    dead: list[pa.Table] = []
    ctx = FlowContext(
        "f",
        Pipeline(name="t", flows={}, base_dir=Path(".")),
        FlowMetrics("f"),
        broker_factory=lambda: None,  # type: ignore[arg-type,return-value]
        dead_letter=lambda rows, why: dead.append(rows),
        committed=lambda: dict(stored or {}),
    )
    w = Window(Window.Config.model_validate({"type": "window", "time": "ts", **cfg}))
    w.open(ctx)
    return w, dead


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Row], list[int], int]:
    """Rows in arrival order (each at most LATENESS behind the newest before it), batch
    sizes, and the batch after whose checkpoint the flow crashes."""
    n = draw(st.integers(1, 120))
    rng = random.Random(draw(st.integers(0, 2**32)))
    times = sorted(rng.sample(range(0, 60_000), n))
    rows = [
        {
            "ts": BASE + t,
            "sym": rng.choice(["BTC", "ETH", None]),
            "price": round(rng.uniform(90, 110), 2),
            "qty": rng.randint(1, 9),
            "_partition": rng.randrange(2),
        }
        for t in times
    ]
    rows.sort(key=lambda r: r["ts"] + rng.randint(0, LATENESS))  # out of order, bounded
    offsets = [0, 0]
    for r in rows:
        r["_offset"] = offsets[r["_partition"]]
        offsets[r["_partition"]] += 1
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=5)) if n > 1 else [])
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    return rows, sizes, draw(st.integers(0, len(sizes)))


def table(rows: list[Row]) -> pa.Table:
    cols = ["ts", "sym", "price", "qty", "_offset"]
    t = pa.table({c: [r[c] for r in rows] for c in cols}).cast(
        pa.schema(
            [("ts", pa.int64()), ("sym", pa.string()), ("price", pa.float64())]
            + [("qty", pa.int64()), ("_offset", pa.int64())]
        )
    )
    t = t.append_column("_partition", pa.array([r["_partition"] for r in rows], pa.int32()))
    return t.append_column("_topic", pa.array(["ticks"] * len(rows), pa.string()))


def run(cfg: dict[str, object], rows: list[Row], sizes: list[int], crash: int) -> list[Row]:
    """Feed the batches; after batch ``crash`` keep only what landed with its checkpoint,
    restart from that checkpoint and re-read every row from the held offsets on."""
    w, dead = window(**cfg)
    landed: list[Row] = []
    stored: dict[str, int] = {}
    at = 0
    for i, n in enumerate(sizes):
        landed += w(table(rows[at : at + n])).to_pylist()
        at += n
        if i + 1 == crash:
            read = [
                1 + max((r["_offset"] for r in rows[:at] if r["_partition"] == p), default=-1)
                for p in (0, 1)
            ]
            stored = w.checkpoint({"ticks/0": read[0], "ticks/1": read[1]})
            break
    if stored:
        w, dead = window(stored, **cfg)
        held = [stored["ticks/0"], stored["ticks/1"]]
        again = [r for r in rows if r["_offset"] >= held[r["_partition"]]]
        rng = random.Random(len(again))
        while again:
            n = rng.randint(1, len(again))
            landed += w(table(again[:n])).to_pylist()
            again = again[n:]
    else:
        for n in sizes[crash:]:
            landed += w(table(rows[at : at + n])).to_pylist()
            at += n
    landed += w.finish().to_pylist()
    assert not [d for d in dead if d.num_rows], "no row is late within allowed_lateness"
    return landed


def vwap(rows: list[Row]) -> float:
    return sum(r["price"] * r["qty"] for r in rows) / sum(r["qty"] for r in rows)


def summary(rows: list[Row]) -> Row:
    by_time = sorted(rows, key=lambda r: r["ts"])
    return {
        "n": len(rows),
        "open": by_time[0]["price"],
        "close": by_time[-1]["price"],
        "high": max(r["price"] for r in rows),
        "vwap": vwap(rows),
    }


AGGS = {"n": "count(*)", "open": "first(price)", "close": "last(price)"} | {
    "high": "max(price)",
    "vwap": "vwap(price, qty)",
}


def same(got: list[Row], want: list[Row], key: Callable[[Row], Any]) -> None:
    got, want = sorted(got, key=key), sorted(want, key=key)
    assert [key(g) for g in got] == [key(w) for w in want]
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w), (g, w)


def by_key(rows: list[Row]) -> dict[Any, list[Row]]:
    out: dict[Any, list[Row]] = {}
    for r in rows:
        out.setdefault(r["sym"], []).append(r)
    return out


def window_key(r: Row) -> tuple[Any, ...]:
    return (r["window_start"], r["sym"] or "")


PROPERTY = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(streams())
def test_sliding_windows_equal_brute_force(stream: tuple[list[Row], list[int], int]) -> None:
    rows, sizes, crash = stream
    cfg = {"size": "4s", "every": "1s", "by": ["sym"], "aggregates": AGGS}
    cfg["allowed_lateness"] = f"{LATENESS}ms"
    want = []
    for start in {(r["ts"] // 1000 - k) * 1000 for r in rows for k in range(4)}:
        for sym, members in by_key([r for r in rows if start <= r["ts"] < start + 4000]).items():
            want.append({"window_start": start, "window_end": start + 4000, "sym": sym})
            want[-1] |= summary(members)
    got = run(cfg, rows, sizes, crash)
    for g in got:
        g["window_start"], g["window_end"] = (
            int(g[k].timestamp() * 1000) for k in ("window_start", "window_end")
        )
    same(got, want, window_key)


@PROPERTY
@given(streams())
def test_moving_aggregates_equal_brute_force(stream: tuple[list[Row], list[int], int]) -> None:
    rows, sizes, crash = stream
    cfg = {
        "over": "3s",
        "by": ["sym"],
        "allowed_lateness": f"{LATENESS}ms",
        "aggregates": {
            "ma_3s": "avg(price)",
            "ma_1s": "avg(price) over 1s",
            "vwap_3s": "vwap(price, qty)",
            "sum_3": "sum(qty) over 3 rows",
            "first_3": "first(price) over 3 rows",
        },
    }
    want = []
    for members in by_key(rows).values():
        ordered = sorted(members, key=lambda r: (r["ts"], r["_partition"], r["_offset"]))
        for i, r in enumerate(ordered):
            last = [m for m in members if r["ts"] - 3000 < m["ts"] <= r["ts"]]
            second = [m for m in members if r["ts"] - 1000 < m["ts"] <= r["ts"]]
            three = ordered[max(0, i - 2) : i + 1]
            want.append(r | {"ma_3s": sum(m["price"] for m in last) / len(last)})
            want[-1] |= {"ma_1s": sum(m["price"] for m in second) / len(second)}
            want[-1] |= {"vwap_3s": vwap(last), "sum_3": sum(m["qty"] for m in three)}
            want[-1] |= {"first_3": three[0]["price"], "_topic": "ticks"}
    same(run(cfg, rows, sizes, crash), want, lambda r: (r["_partition"], r["_offset"]))


@PROPERTY
@given(streams(), st.sampled_from([500, 1500, 4000]))
def test_session_windows_equal_brute_force(
    stream: tuple[list[Row], list[int], int], gap: int
) -> None:
    rows, sizes, crash = stream
    cfg = {"gap": f"{gap}ms", "by": ["sym"], "aggregates": AGGS}
    cfg["allowed_lateness"] = f"{LATENESS}ms"
    want = []
    for sym, members in by_key(rows).items():
        ordered = sorted(members, key=lambda r: r["ts"])
        session = [ordered[0]]
        for r in [*ordered[1:], None]:
            if r is not None and r["ts"] - session[-1]["ts"] < gap:
                session.append(r)
                continue
            want.append(
                {"window_start": session[0]["ts"], "window_end": session[-1]["ts"] + gap}
                | {"sym": sym}
                | summary(session)
            )
            session = [r] if r is not None else []
    got = run(cfg, rows, sizes, crash)
    for g in got:
        g["window_start"], g["window_end"] = (
            int(g[k].timestamp() * 1000) for k in ("window_start", "window_end")
        )
    same(got, want, window_key)


def ticks(times: list[int], first: int = 0) -> pa.Table:
    rows = [
        {"ts": BASE + t, "sym": "BTC", "price": 100.0 + i, "qty": 1, "_partition": 0}
        | {"_offset": first + i}
        for i, t in enumerate(times)
    ]
    return table(rows)


def test_moving_rows_emit_once_the_watermark_passes_and_late_rows_are_dead_letters() -> None:
    w, dead = window(over="10s", aggregates={"ma": "avg(price)"})
    assert w(ticks([0, 1000])).column("ma").to_pylist() == [100.0]  # 1000 waits for the mark
    # 500 is late (dead-lettered) but still context for the rows not yet emitted
    assert w(ticks([500, 3000], first=2)).column("ma").to_pylist() == [pytest.approx(301 / 3)]
    assert [d.column("_offset").to_pylist() for d in dead if d.num_rows] == [[2]]
    assert w.finish().column("ma").to_pylist() == [100.5]


def test_session_checkpoint_holds_the_rows_of_open_sessions() -> None:
    w, _ = window(gap="2s", aggregates={"n": "count(*)"})
    assert w(ticks([0, 1000, 5000, 9000])).column("n").to_pylist() == [2, 1]
    assert w.checkpoint({"ticks/0": 4})["ticks/0"] == 3  # the session at 9s is open


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"size": "1m", "gap": "10s"}, "give exactly one of `size`"),
        ({"over": "1 fortnight"}, "is not a duration"),
        ({"over": "0 rows"}, "must be longer than 0"),
        ({"size": "1m", "every": "7s"}, "every 7s must divide size 1m"),
        ({"gap": "1m", "aggregates": {"n": "avg(x) over 1m"}}, "needs a moving window"),
        ({"size": "1m", "aggregates": {"n": "vwap(price)"}}, "vwap takes a price and a volume"),
    ],
)
def test_config_errors_name_the_fix(cfg: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Window.Config.model_validate(
            {"type": "window", "time": "ts", "aggregates": {"n": "count(*)"}} | cfg
        )


def test_moving_aggregate_names_must_not_clash_with_input_columns() -> None:
    w, _ = window(over="1m", aggregates={"price": "avg(price)"})
    with pytest.raises(ConfigError, match="clash with input columns"):
        w(ticks([0]))
