"""LakeSink: checkpoint in the snapshot summary, exactly-once restart, schema on write, fan-out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pytest

from tidelake.config import loads
from tidelake.lake.catalog import load_table
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.runtime.positions import Fenced, epochs_of, positions_only
from tidelake.sinks.lake import LakeSink, LakeSinkConfig

T0 = datetime(2024, 5, 1, tzinfo=UTC)


class DeadLetters(list[tuple[pa.Table, str]]):
    def __call__(self, rows: pa.Table, reason: str) -> None:
        self.append((rows, reason))

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t, _ in self)


def _no_broker() -> None:
    raise AssertionError("the lake sink must not need the broker")


def make_sink(tmp_path: Path, dlq: DeadLetters | None = None, flow: str = "f", **config: object):
    pipeline = loads("name: demo\nflows: {}\n", tmp_path / "p.yaml")
    ctx = FlowContext(
        flow=flow,
        pipeline=pipeline,
        metrics=FlowMetrics(flow),
        broker_factory=_no_broker,  # type: ignore[arg-type]
        dead_letter=dlq if dlq is not None else DeadLetters(),
    )
    sink = LakeSink(LakeSinkConfig.model_validate({"type": "lake", "table": "events"} | config))
    sink.open(ctx)
    return sink, pipeline


def topic_rows(start: int, stop: int, partition: int = 0, **extra: list[object]) -> pa.Table:
    n = stop - start
    cols: dict[str, object] = {
        "id": pa.array(range(start, stop), pa.int32()),
        "ts": pa.array([T0 + timedelta(hours=i) for i in range(start, stop)], pa.timestamp("ns")),
        "_topic": ["ratings"] * n,
        "_partition": pa.array([partition] * n, pa.int32()),
        "_offset": pa.array(range(start, stop), pa.int64()),
    }
    cols.update(extra)
    return pa.table(cols)


def landed(pipeline, name: str = "events") -> pa.Table:  # type: ignore[no-untyped-def]
    return load_table(pipeline, name).scan().to_arrow().sort_by("id")


def test_append_stores_checkpoint_in_snapshot_summary(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path)
    assert sink.checkpoint() == {}
    sink.write(topic_rows(0, 10), {"ratings/0": 10})
    sink.write(topic_rows(10, 25), {"ratings/0": 25})

    table = load_table(pipeline, "events")
    assert landed(pipeline)["id"].to_pylist() == list(range(25))
    assert len(table.snapshots()) == 2, "one Iceberg commit per write"
    snapshot = table.current_snapshot()
    assert snapshot is not None and snapshot.summary is not None
    summary = snapshot.summary.additional_properties
    assert summary["tidelake.flow"] == "f"
    assert '"ratings/0":25' in summary["tidelake.checkpoint.f"]
    assert sink.checkpoint() == {"ratings/0": 25}
    assert [f.name for f in table.spec().fields] == ["ts_day"], "auto: partitioned by day(ts)"
    assert str(table.schema().find_field("ts").field_type) == "timestamp"


def test_partitions_claimed_before_the_table_existed_are_fenced_from_its_first_commit(
    tmp_path: Path,
) -> None:
    """Two workers hold one partition while the table does not exist yet (a zombie and its
    successor, both claims stored nowhere): the first commit gives the partition an epoch,
    so the other's epoch-less commit of the same rows is refused, not landed twice."""
    zombie, pipeline = make_sink(tmp_path)
    successor, _ = make_sink(tmp_path)
    assert zombie.claim(["ratings/0"]) == successor.claim(["ratings/0"]) == {}
    successor.write(topic_rows(0, 10), {"ratings/0": 10})
    with pytest.raises(Fenced, match="ratings/0"):
        zombie.write(topic_rows(0, 10), {"ratings/0": 10})
    successor.write(topic_rows(10, 15), {"ratings/0": 15})  # its own epoch goes with it
    assert landed(pipeline)["id"].to_pylist() == list(range(15))
    restarted, _ = make_sink(tmp_path)  # the zombie restarts and claims properly
    claimed = restarted.claim(["ratings/0"])
    assert positions_only(claimed) == {"ratings/0": 15}
    with pytest.raises(Fenced):
        successor.write(topic_rows(15, 16), {"ratings/0": 16})


def test_new_sink_resumes_from_lake_and_a_zombie_cannot_land(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path)
    held = sink.claim(["ratings/0"])
    sink.write(topic_rows(0, 10), {"ratings/0": 10} | epochs_of(held))
    # the worker stalls; its partition goes to a new one (a new process), which resumes
    restarted, _ = make_sink(tmp_path)
    claimed = restarted.claim(["ratings/0"])
    assert positions_only(claimed) == {"ratings/0": 10}
    restarted.write(topic_rows(10, 15), {"ratings/0": 15} | epochs_of(claimed))
    # the old worker wakes up and commits its stale batch: refused, nothing lands or moves
    with pytest.raises(Fenced, match="took over partition\\(s\\) ratings/0 while"):
        sink.write(topic_rows(10, 20), {"ratings/0": 20} | epochs_of(held))
    assert landed(pipeline)["id"].to_pylist() == list(range(15))
    assert make_sink(tmp_path)[0].checkpoint() == {"ratings/0": 15}


def test_workers_store_their_own_partitions(tmp_path: Path) -> None:
    a, pipeline = make_sink(tmp_path)
    b, _ = make_sink(tmp_path)
    ea, eb = epochs_of(a.claim(["ratings/0"])), epochs_of(b.claim(["ratings/1"]))
    a.write(topic_rows(0, 5, partition=0), {"ratings/0": 5} | ea)
    b.write(topic_rows(100, 103, partition=1), {"ratings/1": 103} | eb)
    a.write(topic_rows(5, 8, partition=0), {"ratings/0": 8} | ea)  # a's table state is stale
    assert sorted(landed(pipeline)["id"].to_pylist()) == [*range(8), 100, 101, 102]
    assert make_sink(tmp_path)[0].checkpoint() == {"ratings/0": 8, "ratings/1": 103}


def test_a_commit_that_lost_the_race_reuses_its_data_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another worker committed first: the retry stages the Parquet file already written (no
    second copy is left in the warehouse, in no snapshot) and dead-letters a bad row once."""
    dlq = DeadLetters()
    a, pipeline = make_sink(tmp_path, dlq)
    b, _ = make_sink(tmp_path)
    ea, eb = epochs_of(a.claim(["ratings/0"])), epochs_of(b.claim(["ratings/1"]))
    a.write(topic_rows(0, 5, partition=0, score=pa.array([1.0] * 5)), {"ratings/0": 5} | ea)
    b.write(topic_rows(100, 103, partition=1, score=pa.array([2.0] * 3)), {"ratings/1": 103} | eb)
    caplog.set_level("INFO", logger="tidelake.sinks.lake")
    stale = topic_rows(5, 8, partition=0, score=pa.array(["6", "oops", "8"]))
    a.write(stale, {"ratings/0": 8} | ea)  # a's table state is stale: its commit is retried

    assert "changed under flow f; retrying" in caplog.text
    assert a.ctx.metrics.counts == {"lake_commit_retries": 1}
    assert sorted(landed(pipeline)["id"].to_pylist()) == [0, 1, 2, 3, 4, 5, 7, 100, 101, 102]
    assert dlq.rows == 1 and dlq[0][0]["score"].to_pylist() == ["oops"]
    live = {
        urlparse(t.file.file_path).path for t in load_table(pipeline, "events").scan().plan_files()
    }
    assert {str(p) for p in tmp_path.rglob("*.parquet")} == live
    assert make_sink(tmp_path)[0].checkpoint() == {"ratings/0": 8, "ratings/1": 103}


def test_empty_write_still_advances_checkpoint(tmp_path: Path) -> None:
    sink, _ = make_sink(tmp_path)
    sink.write(topic_rows(0, 3), {"ratings/0": 3})
    sink.write(topic_rows(0, 0), {"ratings/0": 9})
    restarted, _ = make_sink(tmp_path)
    assert restarted.checkpoint() == {"ratings/0": 9}


def test_two_flows_share_a_table_without_losing_each_others_checkpoint(tmp_path: Path) -> None:
    a, pipeline = make_sink(tmp_path, flow="a")
    b, _ = make_sink(tmp_path, flow="b")
    a.write(topic_rows(0, 2), {"ratings/0": 2})
    for i in range(3):
        b.write(
            topic_rows(10 + i, 11 + i).drop_columns(list(("_topic", "_partition", "_offset"))),
            {"x/0": i + 1},
        )
    assert make_sink(tmp_path, flow="a")[0].checkpoint() == {"ratings/0": 2}
    assert make_sink(tmp_path, flow="b")[0].checkpoint() == {"x/0": 3}


def test_schema_evolves_and_bad_values_go_to_dead_letter(tmp_path: Path) -> None:
    dlq = DeadLetters()
    sink, pipeline = make_sink(tmp_path, dlq)
    sink.write(topic_rows(0, 3, score=pa.array([1.5, 2.5, 3.5], pa.float32())), {"ratings/0": 3})
    # new column mid-stream, id widened int -> long, score float -> double
    batch = topic_rows(3, 6, score=pa.array([4.0, 5.0, 6.0]), comment=["a", None, "c"])
    batch = batch.set_column(0, "id", pa.array([3, 4, 5], pa.int64()))
    sink.write(batch, {"ratings/0": 6})
    # a string arrives where the number column exists: only the unparsable row is rejected
    bad = topic_rows(6, 9, score=pa.array(["7", "oops", "9.5"]))
    sink.write(bad, {"ratings/0": 9})

    table = load_table(pipeline, "events")
    types = {f.name: str(f.field_type) for f in table.schema().fields}
    assert types["id"] == "long" and types["score"] == "double" and types["comment"] == "string"
    rows = landed(pipeline)
    assert rows["id"].to_pylist() == [0, 1, 2, 3, 4, 5, 6, 8]
    assert rows["score"].to_pylist() == [1.5, 2.5, 3.5, 4.0, 5.0, 6.0, 7.0, 9.5]
    assert rows["comment"].to_pylist()[:6] == [None, None, None, "a", None, "c"]
    assert dlq.rows == 1
    rejected, reason = dlq[0]
    assert rejected["score"].to_pylist() == ["oops"]
    assert reason == [  # quoting the row's own value
        "column 'score': 'oops' (string) does not fit the lake column type double; fix the "
        "producer or cast it in a transform"
    ]
    assert sink.checkpoint() == {"ratings/0": 9}, "the batch is committed despite the bad row"


def test_nested_structs_and_null_only_columns(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path, partition_by="none")
    batch = pa.table(
        {
            "id": [1, 2],
            "user": [{"name": "ann", "age": 3}, {"name": "bob", "age": None}],
            "nothing": pa.nulls(2),
            "tags": [["a"], []],
        }
    )
    sink.write(batch, {})
    batch2 = pa.table({"id": [3], "user": [{"name": "cy", "age": 4, "city": "Lyon"}]})
    sink.write(batch2, {})
    table = load_table(pipeline, "events")
    assert "nothing" not in table.schema().column_names
    assert table.spec().is_unpartitioned()
    users = landed(pipeline)["user"].to_pylist()
    assert users[2] == {"name": "cy", "age": 4, "city": "Lyon"}
    assert users[0]["city"] is None


def test_fan_out_by_column_value(tmp_path: Path) -> None:
    dlq = DeadLetters()
    sink, pipeline = make_sink(tmp_path, dlq, table="ev_{kind}")
    batch = topic_rows(0, 6, kind=["click", "view", "click", "Buy-Now", None, "view"])
    sink.write(batch, {"ratings/0": 6})
    assert landed(pipeline, "ev_click")["id"].to_pylist() == [0, 2]
    assert landed(pipeline, "ev_view")["id"].to_pylist() == [1, 5]
    assert landed(pipeline, "ev_buy_now")["id"].to_pylist() == [3]
    assert dlq.rows == 1 and "null" in dlq[0][1]
    restarted, _ = make_sink(tmp_path, table="ev_{kind}")
    assert restarted.checkpoint() == {"ratings/0": 6}


def test_fan_out_crash_between_tables_rereads_and_fences(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path, table="ev_{kind}")
    sink.write(topic_rows(0, 2, kind=["a", "b"]), {"ratings/0": 2})
    # simulate a crash after the first table of a two-table write was committed
    original = sink._commit
    calls = []

    def crash_on_second(name, rows, entry):  # type: ignore[no-untyped-def]
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("kill -9")
        original(name, rows, entry)

    sink._commit = crash_on_second  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        sink.write(topic_rows(2, 4, kind=["a", "b"]), {"ratings/0": 4})

    restarted, _ = make_sink(tmp_path, table="ev_{kind}")
    assert restarted.checkpoint() == {"ratings/0": 2}, "the half-done write is re-read"
    restarted.write(topic_rows(2, 4, kind=["a", "b"]), {"ratings/0": 4})
    assert landed(pipeline, "ev_a")["id"].to_pylist() == [0, 2], "no duplicate in the table reached"
    assert landed(pipeline, "ev_b")["id"].to_pylist() == [1, 3]
    assert make_sink(tmp_path, table="ev_{kind}")[0].checkpoint() == {"ratings/0": 4}


def test_config_rejects_bad_table_and_partition_specs() -> None:
    with pytest.raises(ValueError, match="letters"):
        LakeSinkConfig.model_validate({"type": "lake", "table": "bad name"})
    with pytest.raises(ValueError, match="auto, none"):
        LakeSinkConfig.model_validate({"type": "lake", "table": "t", "partition_by": "daily"})
    cfg = LakeSinkConfig.model_validate(
        {"type": "lake", "table": "t", "partition_by": ["day(ts)", "bucket(4, id)", "region"]}
    )
    assert cfg.maintenance.compact_every == 100


def test_explicit_partition_spec(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path, partition_by=["hour(ts)", "bucket(4, id)"])
    sink.write(topic_rows(0, 4), {"ratings/0": 4})
    spec = load_table(pipeline, "events").spec()
    assert [str(f.transform) for f in spec.fields] == ["hour", "bucket[4]"]
