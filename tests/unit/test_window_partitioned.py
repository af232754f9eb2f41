"""``window`` with ``partitioned: true``: windows and watermark per source partition, so
workers that share the partitions (each owning some, moved between them, crashing and
restarting from the stored checkpoint) together land exactly what one worker lands; the
reference is one unpartitioned window over all input (hypothesis, every kind of window)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidelake.config import Pipeline
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.transforms.window import Window

BASE = 1_700_000_000_000
LATENESS = 2000
PARTITIONS = 4
SYMS = ["a", "b", "c", "d", "e", "f", "g"]  # the topic is keyed by sym: sym i -> partition i % 4
Row = dict[str, Any]
KINDS: dict[str, dict[str, object]] = {
    "tumbling": {"size": "10s"},
    "sliding": {"size": "10s", "every": "5s"},
    "session": {"gap": "3s"},
    "moving": {"over": "5s"},
}


def window(stored: dict[str, int], dead: list[pa.Table], **cfg: object) -> Window:
    ctx = FlowContext(
        "f",
        Pipeline(name="t", flows={}, base_dir=Path(".")),
        FlowMetrics("f"),
        broker_factory=lambda: None,  # type: ignore[arg-type,return-value]
        dead_letter=lambda rows, why: dead.append(rows),
        committed=lambda: dict(stored),
    )
    w = Window(Window.Config.model_validate({"type": "window", "time": "ts", **cfg}))
    w.open(ctx)
    return w


def table(rows: list[Row]) -> pa.Table:
    return pa.table(
        {
            "ts": pa.array([r["ts"] for r in rows], pa.int64()),
            "sym": pa.array([r["sym"] for r in rows], pa.string()),
            "qty": pa.array([r["qty"] for r in rows], pa.int64()),
            "_topic": pa.array(["ticks"] * len(rows), pa.string()),
            "_partition": pa.array([r["_partition"] for r in rows], pa.int32()),
            "_offset": pa.array([r["_offset"] for r in rows], pa.int64()),
        }
    )


def stream(rng: random.Random, n: int) -> list[Row]:
    """Rows in arrival order, each at most LATENESS behind the newest before it; offsets
    per partition of their key."""
    times = sorted(rng.sample(range(0, 60_000), n))
    rows = [{"ts": BASE + t, "sym": rng.choice(SYMS), "qty": rng.randint(1, 9)} for t in times]
    rows.sort(key=lambda r: r["ts"] + rng.randint(0, LATENESS))
    offsets = [0] * PARTITIONS
    for r in rows:
        r["_partition"] = SYMS.index(r["sym"]) % PARTITIONS
        r["_offset"] = offsets[r["_partition"]]
        offsets[r["_partition"]] += 1
    return rows


def one_worker(cfg: dict[str, object], rows: list[Row]) -> list[Row]:
    """The reference: one unpartitioned window over every row in arrival order."""
    dead: list[pa.Table] = []
    w = window({}, dead, **cfg)
    return [*w(table(rows)).to_pylist(), *w.finish().to_pylist()]


class Worker:
    """A worker as the runner drives it: its partitions, read positions and results not yet
    committed; ``commit`` lands them with the checkpoint (merged like the sinks merge). Like
    the runner, it hands the window every key stored when it started except the topic's
    positions, other workers' window bookkeeping included (the window must drop it)."""

    def __init__(self, store: dict[str, int], cfg: dict[str, object]) -> None:
        self.store, self.cfg, self.dead = store, cfg, []  # type: list[pa.Table]
        self.next: dict[int, int] = {}
        self.pending: list[Row] = []
        self.w = window(store, self.dead, **cfg)
        self.carried = {k: v for k, v in store.items() if not k.startswith("ticks/")}

    def claim(self, parts: list[int]) -> None:
        self.next |= {p: self.store.get(f"ticks/{p}", 0) for p in parts}
        self.w.claim([f"ticks/{p}" for p in parts], dict(self.store))

    def release(self, parts: list[int], landed: list[Row]) -> None:
        self.commit(landed)  # the source flushes on revocation, then releases
        for p in parts:
            del self.next[p]
        self.w.release([f"ticks/{p}" for p in parts])

    def read(self, by_part: list[list[Row]], rng: random.Random) -> None:
        batch = []
        for p in rng.sample(sorted(self.next), rng.randint(1, len(self.next))):
            take = by_part[p][self.next[p] : self.next[p] + rng.randint(1, 15)]
            batch += take
            self.next[p] += len(take)
        if batch:
            self.pending += self.w(table(batch)).to_pylist()

    def commit(self, landed: list[Row]) -> None:
        landed += self.pending
        self.pending = []
        read = {f"ticks/{p}": o for p, o in self.next.items()}
        self.store |= self.w.checkpoint(self.carried | read)

    def crash(self) -> None:
        """Lose everything since the last commit; restart and re-claim the same partitions."""
        parts = sorted(self.next)
        self.pending, self.next = [], {}
        self.w = window(self.store, self.dead, **self.cfg)
        self.carried = {k: v for k, v in self.store.items() if not k.startswith("ticks/")}
        self.claim(parts)


def several_workers(cfg: dict[str, object], rows: list[Row], rng: random.Random) -> list[Row]:
    """Three workers over the partitions, with random reads, commits, crashes and partitions
    moved between workers; then every row read, committed and the source's end emitted."""
    by_part: list[list[Row]] = [[r for r in rows if r["_partition"] == p] for p in range(4)]
    store: dict[str, int] = {}
    landed: list[Row] = []
    workers = [Worker(store, cfg) for _ in range(3)]
    for p in range(PARTITIONS):
        workers[p % 3].claim([p])
    for _ in range(60):
        w = rng.choice([w for w in workers if w.next])
        action = rng.random()
        if action < 0.6:
            w.read(by_part, rng)
        elif action < 0.8:
            w.commit(landed)
        elif action < 0.9:
            w.crash()
        else:  # rebalance: one partition moves to another worker
            p = rng.choice(sorted(w.next))
            w.release([p], landed)
            rng.choice([o for o in workers if o is not w]).claim([p])
    for w in workers:
        while any(w.next[p] < len(by_part[p]) for p in w.next):
            w.read(by_part, rng)
        w.commit(landed)
        landed += w.w.finish().to_pylist()
        assert not [d for d in w.dead if d.num_rows], "no row is late within allowed_lateness"
    return landed


def same(got: list[Row], want: list[Row]) -> None:
    """Equal as multisets (every aggregate here is an integer: exact)."""

    def key(r: Row) -> tuple[str, ...]:
        return tuple(str(v) for v in r.values())

    assert sorted(got, key=key) == sorted(want, key=key)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(KINDS)), st.integers(20, 150), st.integers(0, 2**32))
def test_several_workers_equal_one_worker(kind: str, n: int, seed: int) -> None:
    aggs = {"n": "count(*)", "total": "sum(qty)", "hi": "max(qty)"}
    cfg = KINDS[kind] | {"by": ["sym"], "aggregates": aggs, "allowed_lateness": "2s"}
    rows = stream(random.Random(seed), n)
    want = one_worker(cfg, rows)
    same(several_workers(cfg | {"partitioned": True}, rows, random.Random(seed + 1)), want)


def test_tumbling_windows_equal_brute_force_across_moves_and_crashes() -> None:
    rows = stream(random.Random(3), 400)
    aggs = {"n": "count(*)", "total": "sum(qty)"}
    cfg = {"size": "10s", "by": ["sym"], "aggregates": aggs, "allowed_lateness": "2s"}
    got = several_workers(cfg | {"partitioned": True}, rows, random.Random(4))
    want: dict[tuple[int, str], list[int]] = {}
    for r in rows:
        start = (r["ts"] // 10_000) * 10_000
        want.setdefault((start, r["sym"]), []).append(r["qty"])
    assert sorted((g["window_start"].timestamp() * 1000, g["sym"], g["n"], g["total"])
                  for g in got) == sorted(
        (s, k, len(q), sum(q)) for (s, k), q in want.items()
    )  # fmt: skip


def partition_rows(seconds: list[int], partition: int, first: int = 0) -> pa.Table:
    rows = [
        {"ts": BASE + s * 1000, "sym": "a", "qty": 1, "_partition": partition, "_offset": o}
        for o, s in enumerate(seconds, first)
    ]
    return table(rows)


def test_each_partition_has_its_own_watermark_and_checkpoint_keys() -> None:
    dead: list[pa.Table] = []
    w = window({}, dead, size="10s", by=["sym"], partitioned=True, aggregates={"n": "count(*)"})
    w.claim(["ticks/0", "ticks/1"], {})
    # partition 0 reaches 00:25, which closes its [0, 10) and [10, 20) only
    assert w(partition_rows([1, 12, 25], 0)).column("n").to_pylist() == [1, 1]
    assert w(partition_rows([2, 3], 1)).num_rows == 0  # partition 1's watermark is at 00:03
    # a key in two partitions (the topic is not keyed by it): one result per partition
    assert w(partition_rows([11], 1, first=2)).column("n").to_pylist() == [2]
    assert not [d for d in dead if d.num_rows]
    stored = w.checkpoint({"ticks/0": 3, "ticks/1": 3, "other": 1})
    assert stored == {
        "ticks/0": 2,  # held at the open window [20, 30)
        "ticks/1": 2,
        "other": 1,
        "window:ticks/0": 3,
        "window:ticks/1": 3,
        "window:watermark:ticks/0": BASE + 25_000,
        "window:watermark:ticks/1": BASE + 11_000,
    }
    # partition 1 moves away: its rows leave the state, its keys leave this worker's checkpoint,
    # even when the runner hands them back as stored (they are its next owner's to move now)
    w.release(["ticks/1"])
    assert w.checkpoint({"ticks/0": 3, "window:ticks/1": 1, "window:watermark:ticks/1": 0}) == {
        "ticks/0": 2,
        "window:ticks/0": 3,
        "window:watermark:ticks/0": BASE + 25_000,
    }
    # its next owner re-reads from offset 2 (its window [10, 20) is open), then goes on
    other = window({}, dead, size="10s", by=["sym"], partitioned=True, aggregates={"n": "count(*)"})
    other.claim(["ticks/1"], stored)
    assert other(partition_rows([11, 15], 1, first=2)).num_rows == 0
    assert other(partition_rows([21], 1, first=4)).column("n").to_pylist() == [2]  # [10, 20)
    assert not [d for d in dead if d.num_rows]
    assert other.finish().column("n").to_pylist() == [1]
