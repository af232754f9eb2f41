"""LakeSink ``mode: upsert``: one row per key, deletes, one commit with the checkpoint, replays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError
from test_lake_sink import DeadLetters, make_sink

from tidelake.lake import QueryEngine
from tidelake.lake import upsert as lake_upsert
from tidelake.lake.catalog import load_table
from tidelake.lake.pyiceberg_internals import Transaction
from tidelake.sinks.lake import LakeSinkConfig

UPSERT: dict[str, Any] = {"mode": "upsert", "key": ["id"], "delete_when": "_op = 'd'"}


def changes(ops: list[tuple[str, int, str]], first_offset: int, partition: int = 0) -> pa.Table:
    """CDC-like rows (op, id, title) with topic provenance from ``first_offset`` on."""
    n = len(ops)
    return pa.table(
        {
            "id": pa.array([i for _, i, _ in ops], pa.int64()),
            "title": [t for _, _, t in ops],
            "_op": [op for op, _, _ in ops],
            "_topic": ["movies"] * n,
            "_partition": pa.array([partition] * n, pa.int32()),
            "_offset": pa.array(range(first_offset, first_offset + n), pa.int64()),
        }
    )


def state(pipeline, name: str = "events") -> dict[int, str]:  # type: ignore[no-untyped-def]
    with QueryEngine(pipeline) as q:
        rows = q.sql(f"SELECT id, title FROM {name} ORDER BY id").to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate keys in {name}: {ids}"
    return {r["id"]: r["title"] for r in rows}


INSERTS = [("c", i, f"m{i}") for i in range(10)]
MIXED = [
    ("u", 2, "m2 v2"),
    ("d", 5, ""),
    ("c", 10, "m10"),
    ("u", 2, "m2 v3"),  # last occurrence in the batch wins
    ("u", 7, "m7 v2"),
    ("d", 7, ""),  # ... also when it is a delete
    ("c", 11, "m11"),
    ("d", 11, ""),  # created and deleted in the same batch: never stored
    ("d", 99, ""),  # delete of a key the table never had: nothing happens
]
EXPECTED = {i: f"m{i}" for i in range(11) if i not in (5, 7)} | {2: "m2 v3"}


def test_upsert_keeps_one_row_per_key_and_applies_deletes(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path, **UPSERT)
    sink.write(changes(INSERTS, 0), {"movies/0": 10})
    sink.write(changes(MIXED, 10), {"movies/0": 19})
    assert state(pipeline) == EXPECTED
    table = load_table(pipeline, "events")
    snapshot = table.current_snapshot()
    assert snapshot is not None and snapshot.summary is not None
    assert '"movies/0":19' in snapshot.summary.additional_properties["tidelake.checkpoint.f"]
    # copy-on-write: no delete files, so DuckDB reads the Parquet files directly
    assert not any(t.delete_files for t in table.scan().plan_files())
    assert make_sink(tmp_path, **UPSERT)[0].checkpoint() == {"movies/0": 19}


def test_each_write_is_one_catalog_commit_ending_with_the_checkpoint(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path, **UPSERT)
    sink.write(changes(INSERTS, 0), {"movies/0": 10})
    before = load_table(pipeline, "events")
    n_meta, n_snap = len(before.metadata.metadata_log), len(before.snapshots())
    sink.write(changes(MIXED, 10), {"movies/0": 19})
    after = load_table(pipeline, "events")
    assert len(after.metadata.metadata_log) == n_meta + 1, "one metadata version per write"
    new = [s for s in after.snapshots()][n_snap:]
    assert len(new) >= 2, "delete/overwrite then append, in the same commit"
    for s in new:
        assert s.summary is not None
        assert '"movies/0":19' in s.summary.additional_properties["tidelake.checkpoint.f"]
    assert after.current_snapshot().snapshot_id == new[-1].snapshot_id  # type: ignore[union-attr]


def test_replayed_batch_converges_to_the_same_state(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path, **UPSERT)
    sink.write(changes(INSERTS, 0), {"movies/0": 10})
    sink.write(changes(MIXED, 10), {"movies/0": 19})
    # a fresh incarnation re-reads an overlapping range: fenced by offset
    again, _ = make_sink(tmp_path, **UPSERT)
    again.write(changes(MIXED, 10), {"movies/0": 19})
    assert state(pipeline) == EXPECTED
    # without provenance (no fencing possible) replaying is idempotent by key
    plain = changes(INSERTS + MIXED, 0).drop_columns(["_topic", "_partition", "_offset"])
    bare, bare_pipeline = make_sink(tmp_path / "bare", **UPSERT)
    bare.write(plain, {"cdc": 1})
    bare.write(plain.slice(3), {"cdc": 2})
    bare.write(plain, {"cdc": 3})
    assert state(bare_pipeline) == EXPECTED


def test_failed_commit_leaves_nothing_and_the_retry_lands_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink, pipeline = make_sink(tmp_path, **UPSERT)
    sink.write(changes(INSERTS, 0), {"movies/0": 10})
    real = Transaction.commit_transaction
    calls = {"n": 0}

    def crash(self: Transaction):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        raise RuntimeError("killed before the catalog commit")

    monkeypatch.setattr(Transaction, "commit_transaction", crash)
    with pytest.raises(RuntimeError, match="killed"):
        sink.write(changes(MIXED, 10), {"movies/0": 19})
    monkeypatch.setattr(Transaction, "commit_transaction", real)
    assert calls["n"] == 1
    assert state(pipeline) == {i: f"m{i}" for i in range(10)}
    restarted, _ = make_sink(tmp_path, **UPSERT)
    assert restarted.checkpoint() == {"movies/0": 10}
    restarted.write(changes(MIXED, 10), {"movies/0": 19})
    assert state(pipeline) == EXPECTED


def test_lost_race_is_retried_on_the_new_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink, pipeline = make_sink(tmp_path, **UPSERT)
    other, _ = make_sink(tmp_path, flow="other", **UPSERT)
    sink.write(changes(INSERTS, 0), {"movies/0": 10})
    real = lake_upsert.stage
    raced = {"done": False}

    def stage_after_a_concurrent_commit(*args: Any, **kw: Any) -> pa.Table:
        if not raced["done"]:
            raced["done"] = True
            other.write(changes([("u", 3, "m3 other")], 0, partition=1), {"movies/1": 1})
        return real(*args, **kw)

    monkeypatch.setattr(lake_upsert, "stage", stage_after_a_concurrent_commit)
    sink.write(changes(MIXED, 10), {"movies/0": 19})
    assert raced["done"]
    assert state(pipeline) == EXPECTED | {3: "m3 other"}, "neither commit lost"


def test_composite_key_matches_exact_tuples(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path, mode="upsert", key=["a", "b"])
    sink.write(pa.table({"a": [1, 1, 2, 2], "b": ["x", "y", "x", "y"], "v": [1, 2, 3, 4]}), {})
    # (1, y) and (2, x) are in the In-superset of this batch but not in it: they must stay
    sink.write(pa.table({"a": [1, 2, 3], "b": ["x", "y", "x"], "v": [10, 40, 50]}), {})
    with QueryEngine(pipeline) as q:
        got = q.sql("SELECT a, b, v FROM events ORDER BY a, b").to_pylist()
    assert [(r["a"], r["b"], r["v"]) for r in got] == [
        (1, "x", 10),
        (1, "y", 2),
        (2, "x", 3),
        (2, "y", 40),
        (3, "x", 50),
    ]


def test_schema_evolves_and_old_rows_read_null(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path, **UPSERT)
    sink.write(changes(INSERTS, 0), {"movies/0": 10})
    batch = changes([("u", 1, "m1 v2"), ("c", 20, "m20")], 10)
    sink.write(batch.append_column("note", pa.array(["a", "b"])), {"movies/0": 12})
    with QueryEngine(pipeline) as q:
        rows = q.sql("SELECT id, note FROM events WHERE id IN (0, 1, 20) ORDER BY id").to_pylist()
    assert rows == [{"id": 0, "note": None}, {"id": 1, "note": "a"}, {"id": 20, "note": "b"}]


def test_deleting_every_row_and_null_keys(tmp_path: Path) -> None:
    dlq = DeadLetters()
    sink, pipeline = make_sink(tmp_path, dlq, **UPSERT)
    sink.write(changes(INSERTS[:3], 0), {"movies/0": 3})
    gone = changes([("d", 0, ""), ("d", 1, ""), ("d", 2, "")], 3)
    nulls = changes([("c", 0, "no key")], 6).set_column(0, "id", pa.nulls(1, pa.int64()))
    sink.write(pa.concat_tables([gone, nulls]), {"movies/0": 7})
    assert state(pipeline) == {}
    assert dlq.rows == 1 and "null" in dlq[0][1]
    assert make_sink(tmp_path, **UPSERT)[0].checkpoint() == {"movies/0": 7}


def test_config_rules() -> None:
    with pytest.raises(ValidationError, match="needs 'key"):
        LakeSinkConfig.model_validate({"type": "lake", "table": "t", "mode": "upsert"})
    with pytest.raises(ValidationError, match="need mode: upsert"):
        LakeSinkConfig.model_validate({"type": "lake", "table": "t", "delete_when": "x"})
    ok = LakeSinkConfig.model_validate({"type": "lake", "table": "t"} | UPSERT)
    assert ok.mode == "upsert" and ok.key == ["id"]


def test_reduce_changes_last_row_wins() -> None:
    rows = changes(MIXED, 0)
    reduced = lake_upsert.reduce_changes(rows, ["id"], "_op = 'd'")
    assert reduced.upserts.column("id").to_pylist() == [10, 2]
    assert reduced.upserts.column("title").to_pylist() == ["m10", "m2 v3"]
    assert sorted(reduced.deletes.column("id").to_pylist()) == [5, 7, 11, 99]
