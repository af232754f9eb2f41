from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tidelake.config import Pipeline
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.sources.generator import KINDS, GeneratorSource, generate
from tidelake.sources.kinds.rand import BLOCK


def ctx(tmp_path: Path) -> FlowContext:
    pipeline = Pipeline(name="t", flows={}, base_dir=tmp_path)
    return FlowContext("f", pipeline, FlowMetrics("f"), broker_factory=lambda: None)  # type: ignore[arg-type,return-value]


def source(
    tmp_path: Path, checkpoint: dict[str, int] | None = None, **cfg: object
) -> GeneratorSource:
    src = GeneratorSource(GeneratorSource.Config.model_validate({"type": "generator", **cfg}))
    src.open(ctx(tmp_path), checkpoint or {})
    return src


def drain(src: GeneratorSource, size: int) -> tuple[pa.Table, dict[str, int]]:
    tables, positions = [], {}
    while (batch := src.read(size, 0.1)) is not None:
        if batch.table.num_rows:
            tables.append(batch.table)
        positions.update(batch.positions)
    return pa.concat_tables(tables), positions


EXPECTED = {
    "movie_ratings": {"user_id", "movie_id", "rating", "ts"},
    "transactions": {
        "transaction_id",
        "customer_id",
        "product",
        "category",
        "amount",
        "payment_method",
        "ts",
    },
    "web_logs": {"ip", "method", "path", "status", "bytes", "user_agent", "ts"},
    "social_posts": {"post_id", "user", "platform", "text", "likes", "shares", "comments", "ts"},
    "ad_campaigns": {
        "campaign_id",
        "channel",
        "impressions",
        "clicks",
        "spend",
        "conversions",
        "ts",
    },
    "stock_ticks": {"symbol", "price", "volume", "ts"},
    "warehouse_ops": {"op_id", "operator", "product_id", "op", "quantity", "ts"},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_is_deterministic_and_block_independent(kind: str) -> None:
    n = BLOCK + 500
    whole = generate(kind, 0, n, seed=7)
    assert whole.num_rows == n
    if kind in EXPECTED:
        assert set(whole.column_names) == EXPECTED[kind]
    assert whole.equals(generate(kind, 0, n, seed=7))
    pieces = pa.concat_tables(
        [generate(kind, a, b - a, seed=7) for a, b in [(0, 13), (13, BLOCK - 1), (BLOCK - 1, n)]]
    )
    assert pieces.equals(whole)
    assert not generate(kind, 0, 50, seed=8).equals(whole.slice(0, 50))
    assert whole.column("ts").null_count == 0


def test_value_domains() -> None:
    r = generate("movie_ratings", 0, 20_000, seed=1)
    ratings = set(r.column("rating").to_pylist())
    assert ratings <= {x / 2 for x in range(1, 11)} and len(ratings) == 10
    w = generate("web_logs", 0, 20_000, seed=1)
    status = w.column("status").to_pylist()
    share_200 = status.count(200) / len(status)
    assert 0.75 < share_200 < 0.95
    assert any(s >= 500 for s in status) and any(400 <= s < 500 for s in status)
    ops = generate("warehouse_ops", 0, 20_000, seed=1)
    for op, lo, hi in (("receive", 10, 200), ("ship", 1, 20), ("adjust", -5, 5)):
        q = ops.filter(pc.equal(ops.column("op"), op)).column("quantity")
        assert lo <= pc.min(q).as_py() and pc.max(q).as_py() <= hi
    ads = generate("ad_campaigns", 0, 5_000, seed=1)
    assert pc.all(pc.less_equal(ads.column("clicks"), ads.column("impressions"))).as_py()
    assert pc.all(pc.less_equal(ads.column("conversions"), ads.column("clicks"))).as_py()


def test_user_profiles_are_nested_like_randomuser() -> None:
    t = generate("user_profiles", 0, 1_000, seed=3)
    assert pa.types.is_struct(t.schema.field("name").type)
    assert {f.name for f in t.schema.field("dob").type} == {"date", "age"}
    assert {f.name for f in t.schema.field("login").type} >= {"uuid", "username"}
    row = t.slice(0, 1).to_pylist()[0]
    assert row["email"].endswith("@example.com") and "." in row["email"].split("@")[0]
    assert len(row["login"]["uuid"]) == 36 and row["login"]["uuid"][14] == "4"
    age_days = (row["ts"] - row["dob"]["date"]).days
    assert row["dob"]["age"] == int(age_days / 365.2425)
    assert len(set(t.column("login").combine_chunks().field("uuid").to_pylist())) == 1_000


def test_stock_prices_walk_without_jumps_at_block_edges() -> None:
    t = generate("stock_ticks", 0, 4 * BLOCK, seed=5)
    aapl = t.filter(pc.equal(t.column("symbol"), "AAPL")).column("price").to_pylist()
    moves = [abs(b / a - 1) for a, b in zip(aapl, aapl[1:], strict=False)]
    assert max(moves) < 0.01  # per-tick volatility is 0.08%: no teleporting at block edges
    assert min(aapl) > 100 and max(aapl) < 400


def test_source_resumes_exactly_after_checkpoint(tmp_path: Path) -> None:
    full, pos = drain(source(tmp_path, kind="transactions", seed=11, limit=20_000), 3_000)
    assert full.num_rows == 20_000 and pos == {"seq": 20_000}

    first = source(tmp_path, kind="transactions", seed=11, limit=20_000)
    head = [first.read(1_234, 0.1) for _ in range(5)]
    checkpoint = head[-1].positions  # type: ignore[union-attr]
    assert checkpoint == {"seq": 5 * 1_234}
    rest, _ = drain(source(tmp_path, checkpoint, kind="transactions", seed=11, limit=20_000), 999)
    resumed = pa.concat_tables([b.table for b in head if b] + [rest])  # type: ignore[union-attr]
    assert resumed.equals(full)


def test_rate_limits_records_per_second(tmp_path: Path) -> None:
    src = source(tmp_path, kind="movie_ratings", rate=200, limit=60)
    started = time.monotonic()
    table, _ = drain(src, 1_000)
    elapsed = time.monotonic() - started
    assert table.num_rows == 60
    assert 0.25 <= elapsed < 1.5
    ts = table.column("ts").to_pylist()
    assert abs(ts[0].timestamp() - time.time()) < 5  # wall-clock event time when rate is set


def test_rates_that_do_not_divide_a_second_evenly() -> None:
    from tidelake.config import loads
    from tidelake.runtime.base import FlowContext
    from tidelake.runtime.metrics import FlowMetrics
    from tidelake.sources.generator import GeneratorSource

    config = {"type": "generator", "kind": "transactions", "rate": 15_000, "limit": 300}
    src = GeneratorSource(GeneratorSource.Config.model_validate(config))
    ctx = FlowContext("f", loads("name: g\nflows: {}\n"), FlowMetrics("f"), broker_factory=dict)  # type: ignore[arg-type]
    src.open(ctx, {})
    rows = 0
    while (batch := src.read(300, 1.0)) is not None and rows < 300:
        rows += batch.table.num_rows
    assert rows == 300
