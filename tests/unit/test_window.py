"""``window``: results equal a plain GROUP BY, late rows are dead-lettered, and a flow
killed with SIGKILL at random moments lands every window exactly once."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pytest

from tidelake.broker.embedded import EmbeddedBroker
from tidelake.config import Pipeline, loads
from tidelake.errors import ConfigError
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.runtime.runner import FlowRunner
from tidelake.transforms.window import Window

BASE = 1_700_000_000_000  # epoch ms
COUNTRIES = ["de", "fr", "nl", None]


def window(
    dead: list[tuple[pa.Table, str]] | None = None,
    stored: dict[str, int] | None = None,
    **cfg: object,
) -> Window:
    ctx = FlowContext(
        "f",
        Pipeline(name="t", flows={}, base_dir=Path(".")),
        FlowMetrics("f"),
        broker_factory=lambda: None,  # type: ignore[arg-type,return-value]
        dead_letter=lambda rows, why: (dead if dead is not None else []).append((rows, why)),
        committed=lambda: dict(stored or {}),
    )
    w = Window(Window.Config.model_validate({"type": "window", **cfg}))
    w.open(ctx)
    return w


def events(n: int, jitter_ms: int, seed: int = 1) -> pa.Table:
    """Arrival order = offset order; event times run ~10 ms apart, up to ``jitter_ms`` early."""
    rng = random.Random(seed)
    return pa.table(
        {
            "ts": pa.array(
                [BASE + i * 10 - rng.randint(0, jitter_ms) for i in range(n)], pa.int64()
            ),
            "country": [COUNTRIES[rng.randrange(4)] for _ in range(n)],
            "age": [rng.choice([None, *range(18, 80)]) for _ in range(n)],
            "_topic": ["events"] * n,
            "_partition": pa.array([0] * n, pa.int32()),
            "_offset": pa.array(range(n), pa.int64()),
        }
    )


def reference(rows: pa.Table, size_ms: int, hop_ms: int) -> list[tuple[object, ...]]:
    """The windows by plain SQL over all input: every hop-aligned start whose window holds rows."""
    con = duckdb.connect()
    con.register("e", rows)
    return con.sql(
        f"""
        WITH starts AS (SELECT DISTINCT (ts // {hop_ms} - k) * {hop_ms} AS s
                        FROM e, range({size_ms // hop_ms}) r(k))
        SELECT epoch_ms(s), epoch_ms(s + {size_ms}), country, count(*), avg(age), sum(age),
               min(age), max(age)
        FROM starts JOIN e ON e.ts >= s AND e.ts < s + {size_ms}
        GROUP BY s, country ORDER BY s, country NULLS LAST
        """
    ).fetchall()


def rows_of(t: pa.Table) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    con.register("t", t)
    return con.sql("SELECT * FROM t ORDER BY window_start, country NULLS LAST").fetchall()


AGGS = {
    "n": "count(*)",
    "avg_age": "avg(age)",
    "total": "sum(age)",
    "lo": "min(age)",
    "hi": "max(age)",
}


@pytest.mark.parametrize(
    ("hop", "time_as"),
    [
        (None, "ms"),
        ("2s", "ms"),
        (None, "iso"),
        (None, "timestamp[ms]"),
        (None, "timestamp[ns, UTC]"),
    ],
)
def test_matches_group_by_over_all_input_across_batches(hop: str | None, time_as: str) -> None:
    data = events(6000, jitter_ms=3000)
    fed = data
    if time_as == "iso":
        iso = [datetime.fromtimestamp(t / 1000, UTC).isoformat() for t in data["ts"].to_pylist()]
        fed = data.set_column(0, "ts", pa.array(iso))
    elif time_as.startswith("timestamp"):  # every Arrow unit: JSON decode gives timestamp[s]
        unit, _, tz = time_as.removeprefix("timestamp[").rstrip("]").partition(", ")
        ms = pa.array(data["ts"].to_pylist(), pa.timestamp("ms"))
        fed = data.set_column(0, "ts", ms.cast(pa.timestamp(unit, tz or None)))
    dead: list[tuple[pa.Table, str]] = []
    w = window(
        dead, time="ts", size="10s", hop=hop, by=["country"], aggregates=AGGS, allowed_lateness="3s"
    )
    rng, out, i, emitted_early = random.Random(7), [], 0, 0
    while i < fed.num_rows:
        n = rng.randint(1, 700)
        out.append(w(fed.slice(i, n)))
        emitted_early += out[-1].num_rows
        i += n
    out.append(w.finish())
    assert emitted_early > 0, "windows must close as the watermark passes, not only at the end"
    assert not [r for r, _ in dead if r.num_rows]
    got, want = (
        rows_of(pa.concat_tables([t for t in out if t.num_columns])),
        reference(data, 10_000, 2000 if hop else 10_000),
    )
    assert len(got) == len(want)
    for g, r in zip(got, want, strict=True):
        assert g[:4] == r[:4] and g[5:] == r[5:] and g[4] == pytest.approx(r[4])


def test_late_and_timeless_rows_go_to_dead_letter() -> None:
    dead: list[tuple[pa.Table, str]] = []
    w = window(dead, time="ts", size="1m", aggregates={"n": "count(*)"}, exactly_once=False)
    t = pa.table(
        {"ts": ["2024-01-01T00:00:10Z", "2024-01-01T00:01:30+00:00", "soon"], "id": [1, 2, 3]}
    )
    first = w(t)
    assert first.to_pylist() == [
        {
            "window_start": datetime(2024, 1, 1, 0, 0),
            "window_end": datetime(2024, 1, 1, 0, 1),
            "n": 1,
        }
    ]
    late = w(pa.table({"ts": ["2024-01-01T00:00:59", "2024-01-01T00:01:00"], "id": [4, 5]}))
    assert not late.num_rows
    reasons = {why: r.column("id").to_pylist() for r, why in dead if r.num_rows}
    assert reasons == {
        "window: time column 'ts' is NULL or not a timestamp": [3],
        "window: late record: its window already closed (allowed_lateness 0s, "
        "watermark 2024-01-01T00:01:30+00:00)": [4],
    }
    assert w.finish().column("n").to_pylist() == [2]  # 00:01:30 and 00:01:00


def partition_rows(seconds: list[int], first: int = 0, partition: int = 0) -> pa.Table:
    """Rows at consecutive offsets with event times ``BASE + seconds``."""
    n = len(seconds)
    return pa.table(
        {
            "ts": pa.array([BASE + s * 1000 for s in seconds], pa.int64()),
            "_topic": ["events"] * n,
            "_partition": pa.array([partition] * n, pa.int32()),
            "_offset": pa.array(range(first, first + n), pa.int64()),
        }
    )


def test_checkpoint_holds_open_windows_and_restart_skips_emitted_rows() -> None:
    dead: list[tuple[pa.Table, str]] = []
    cfg = {"time": "ts", "size": "10s", "aggregates": {"n": "count(*)"}}
    w = window(dead, **cfg)
    # offsets 0-3 of partition 0: windows [10,20) and [0,10) close, [20,30) stays open
    assert w(partition_rows([12, 21, 5, 14])).column("n").to_pylist() == [1, 2]
    assert w(partition_rows([3], partition=1)).num_rows == 0  # late: window [0,10) already emitted
    stored = w.checkpoint({"events/0": 4, "events/1": 1, "other": 7})
    assert stored == {
        "events/0": 1,  # offset 1 is still in an open window: a restart re-reads from it
        "events/1": 1,
        "other": 7,
        "window:events/0": 4,
        "window:events/1": 1,
        "window:watermark": BASE + 21_000,
    }
    # the restart re-reads offsets 1-3 (2 and 3 were emitted: skipped, not late), then 4
    again = window(dead, stored=stored, **cfg)
    assert again(partition_rows([21, 5, 14, 23], first=1)).num_rows == 0
    assert again(partition_rows([21, 5, 14, 23], first=1)).num_rows == 0  # a seek back: nothing new
    assert again.checkpoint({"events/0": 5})["events/0"] == 1
    assert again.finish().column("n").to_pylist() == [2]
    assert again.checkpoint({"events/0": 2})["events/0"] == 5  # never behind what was read
    assert [(r.column("_offset").to_pylist(), why[:19]) for r, why in dead if r.num_rows] == [
        ([0], "window: late record")
    ]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("size: 10s", "size: 1 fortnight", "size: Value error, '1 fortnight' is not a duration"),
        ("count(*)", "median(age)", "users: 'median(age)': unknown aggregate (use count(*)"),
        ("count(*)", "count(DISTINCT age)", "(DISTINCT is not mergeable)"),
        ("size: 10s", "size: 1m\n        hop: 25s", "hop 25s must divide size 1m"),
        ("size: 10s", "size: 0s", "size: Value error, must be longer than 0"),
    ],
)
def test_config_errors_are_clear(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"p.yaml:\d+: flows.agg.transforms.0") as e:
        loads(pipeline(window_yaml().replace(old, new)), tmp_path / "p.yaml")
    assert message in str(e.value)


def test_rows_without_provenance_are_refused_unless_exactly_once_is_off(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly_once: false"):
        window(time="ts", size="1m", aggregates={"n": "count(*)"})(pa.table({"ts": [BASE]}))
    (tmp_path / "in.csv").write_text(
        "ts,country,age\n"
        + "".join(f"{BASE + i * 1000},{COUNTRIES[i % 3]},{20 + i % 7}\n" for i in range(500))
    )
    yaml = pipeline(window_yaml() + "        exactly_once: false\n")
    p = loads(
        yaml.replace("{type: topic, topic: events}", "{type: file, path: in.csv}"),
        tmp_path / "p.yaml",
    )
    FlowRunner(p, "agg").run()  # the file ends: open windows are emitted too
    with sqlite3.connect(tmp_path / "out.db") as c:
        assert c.execute("SELECT count(*), sum(users) FROM windows").fetchone() == (150, 500)


def window_yaml() -> str:
    return """\
      - type: window
        time: ts
        size: 10s
        by: [country]
        allowed_lateness: 30s
        aggregates:
          users: count(*)
          avg_age: avg(age)
          total: sum(age)
"""


def pipeline(transforms: str) -> str:
    return (
        "name: t\nbroker: embedded\ndatabase: sqlite:///out.db\nflows:\n  agg:\n"
        "    source: {type: topic, topic: events}\n"
        "    sink: {type: table, table: windows}\n"
        "    batch: {size: 200, max_latency: 0.05}\n"
        "    transforms:\n" + textwrap.indent(transforms, "  ").replace("\n  \n", "\n\n")
    )


RUN = """\
import signal, sys, threading
from tidelake.config import load
from tidelake.runtime.runner import FlowRunner
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
FlowRunner(load(sys.argv[1]), "agg", stop).run()
"""


def test_sigkill_mid_stream_then_restart_lands_every_window_exactly_once(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(pipeline(window_yaml()))
    n = 12_000
    data = events(n, jitter_ms=5000, seed=3)
    broker = EmbeddedBroker(str(tmp_path / ".tidelake" / "log.db"))
    broker.create_topic("events", 2)
    prod = broker.producer()
    rows = data.drop_columns(["_topic", "_partition", "_offset"]).to_pylist()
    closer = {"ts": BASE + n * 10 + 600_000, "country": "zz", "age": 1}  # closes every window
    prod.produce(
        "events",
        [orjson.dumps(r) for r in [*rows, closer]],
        [str(i).encode() for i in range(n + 1)],
    )
    prod.close()
    want = [(str(r[0]), str(r[1]), *r[2:6]) for r in reference(data, 10_000, 10_000)]

    def landed() -> list[tuple[object, ...]]:
        try:
            with sqlite3.connect(tmp_path / "out.db") as c:
                return c.execute(
                    "SELECT substr(window_start, 1, 19), substr(window_end, 1, 19), country, "
                    "users, avg_age, total FROM windows "
                    "ORDER BY window_start, country IS NULL, country"
                ).fetchall()
        except sqlite3.OperationalError:
            return []

    log_file = tmp_path / "stderr.log"

    def launch() -> subprocess.Popen[bytes]:
        with log_file.open("ab") as err:
            return subprocess.Popen(
                [sys.executable, "-c", RUN, str(tmp_path / "p.yaml")],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def died(proc: subprocess.Popen[bytes]) -> str:
        return f"flow exited with {proc.returncode}: {log_file.read_text()[-2000:]}"

    rng, seen, kills = random.Random(5), 0, []
    for _ in range(6):
        proc = launch()
        try:
            deadline = time.monotonic() + 30
            while len(landed()) <= seen and len(landed()) < len(want):
                assert proc.poll() is None, died(proc)
                assert time.monotonic() < deadline, f"no progress past {seen} windows"
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.1))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        seen = len(landed())
        kills.append(seen)
        if seen >= len(want):
            break
    mid_stream = [k for k in kills if k < len(want)]
    assert len(mid_stream) >= 3, f"windows landed at each kill: {kills} of {len(want)}"
    proc, metrics = launch(), tmp_path / ".tidelake" / "metrics" / "agg.json"

    def running() -> bool:  # SIGTERM is handled only once the flow runs
        try:
            m = orjson.loads(metrics.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return False
        return bool(m["pid"] == proc.pid and m["state"] == "running")

    try:
        deadline = time.monotonic() + 30
        while not (running() and len(landed()) >= len(want)) and time.monotonic() < deadline:
            assert proc.poll() is None, died(proc)
            time.sleep(0.1)
        time.sleep(0.5)  # a duplicate would land after the count first reached the target
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, died(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    got = landed()
    assert [g[:4] + g[5:] for g in got] == [w[:4] + w[5:] for w in want]
    assert [g[4] for g in got] == pytest.approx([w[4] for w in want])
    dlq = broker.consumer("check", ["t.agg.dlq"]).poll(10, 0.5)
    assert not len(dlq), [orjson.loads(v)["reason"] for v in dlq.values]


def test_a_key_column_named_like_the_query_internals_works() -> None:
    w = window(time="ts", size="10s", by=["k"], aggregates={"n": "count(*)"})
    rows = partition_rows([1, 2, 12]).append_column("k", pa.array(["x", "y", "x"]))
    assert [(r["k"], r["n"]) for r in w(rows).to_pylist()] == [("x", 1), ("y", 1)]
    assert [(r["k"], r["n"]) for r in w.finish().to_pylist()] == [("x", 1)]
