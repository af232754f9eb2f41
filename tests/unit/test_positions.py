"""The runner's fencing and partition epochs (runtime.positions), and the table sink's use."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidelake.broker.base import MessageBatch
from tidelake.config import loads
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.runtime.positions import Fenced, claim, epochs_of, fence, merge
from tidelake.sinks.table import TableSink, TableSinkConfig


def rows(partition: int, offsets: range) -> pa.Table:
    n = len(offsets)
    return pa.table(
        {
            "id": [partition * 1000 + o for o in offsets],
            "_topic": ["t"] * n,
            "_partition": pa.array([partition] * n, pa.int32()),
            "_offset": pa.array(offsets, pa.int64()),
        }
    )


def test_fence_drops_rows_below_their_own_partitions_position() -> None:
    batch = pa.concat_tables([rows(0, range(3, 8)), rows(1, range(0, 3)), rows(2, range(0, 2))])
    kept = fence(batch, {"t/0": 5, "t/1": 1, "other/2": 9, "t/0#epoch": 7})
    assert kept["id"].to_pylist() == [5, 6, 7, 1001, 1002, 2000, 2001]
    assert fence(batch.drop_columns(["_offset"]), {"t/0": 5}).num_rows == batch.num_rows


records = st.lists(st.tuples(st.sampled_from(["t", "u"]), st.integers(0, 3), st.integers(0, 20)))
floors = st.dictionaries(st.sampled_from([f"{t}/{p}" for t in "tu" for p in range(4)]),
                         st.integers(0, 20))  # fmt: skip


@given(records, floors)
def test_fence_keeps_exactly_the_rows_at_or_above_their_floor(
    batch: list[tuple[str, int, int]], stored: dict[str, int]
) -> None:
    table = pa.table({"_topic": [t for t, _, _ in batch],
                      "_partition": pa.array([p for _, p, _ in batch], pa.int32()),
                      "_offset": pa.array([o for _, _, o in batch], pa.int64())})  # fmt: skip
    kept = fence(table, stored)
    assert list(zip(*kept.to_pydict().values(), strict=True)) == [
        (t, p, o) for t, p, o in batch if o >= stored.get(f"{t}/{p}", -1)
    ]


@given(records, st.booleans())
def test_next_offsets_is_one_past_the_highest_offset_per_partition(
    batch: list[tuple[str, int, int]], one_topic: bool
) -> None:
    batch = [("t" if one_topic else t, p, o) for t, p, o in batch]
    msgs = MessageBatch([t for t, _, _ in batch], [p for _, p, _ in batch],
                        [o for _, _, o in batch], [0] * len(batch))  # fmt: skip
    expected: dict[tuple[str, int], int] = {}
    for t, p, o in batch:
        expected[(t, p)] = max(expected.get((t, p), 0), o + 1)
    assert msgs.next_offsets() == expected


def test_merge_refuses_a_stale_epoch_and_keeps_other_workers_keys() -> None:
    stored = {"t/0": 10, "t/1": 4, "t/0#epoch": 2, "t/1#epoch": 1}
    assert claim(stored, ["t/0", "t/2"]) == {"t/0#epoch": 3, "t/2#epoch": 1}
    assert merge(stored, {"t/1": 9, "t/1#epoch": 1}, "p/f") == stored | {"t/1": 9}
    with pytest.raises(
        Fenced,
        match=r"flow p/f: refused a stale batch: another worker took over partition\(s\) t/0 ",
    ):
        merge(stored, {"t/0": 12, "t/1": 9, "t/0#epoch": 1, "t/1#epoch": 1}, "p/f")


def open_sink(tmp_path: Path) -> TableSink:
    pipeline = loads(
        f"name: p\ndatabase: sqlite:///{tmp_path}/out.db\nflows: {{}}\n", tmp_path / "p.yaml"
    )
    sink = TableSink(TableSinkConfig(type="table", table="events"))
    sink.open(
        FlowContext(flow="f", pipeline=pipeline, metrics=FlowMetrics("f"), broker_factory=dict)
    )  # type: ignore[arg-type]
    return sink


def test_table_sink_refuses_a_zombie_inside_its_transaction(tmp_path: Path) -> None:
    old, new = open_sink(tmp_path), open_sink(tmp_path)
    held = epochs_of(old.claim(["t/0", "t/1"]))
    old.write(rows(0, range(0, 5)), {"t/0": 5, "t/1": 0} | held)
    # t/0 moves to the new worker while the old one is paused; t/1 stays
    taken = new.claim(["t/0"])
    assert taken["t/0"] == 5
    new.write(rows(0, range(5, 9)), {"t/0": 9} | epochs_of(taken))
    with pytest.raises(Fenced, match="another worker took over partition\\(s\\) t/0 while"):
        old.write(rows(0, range(5, 7)), {"t/0": 7, "t/1": 0} | held)
    with sqlite3.connect(tmp_path / "out.db") as c:
        assert c.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone() == (9, 9)
    assert new.checkpoint() == {"t/0": 9, "t/1": 0}
