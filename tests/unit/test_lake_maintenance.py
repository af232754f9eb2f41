"""Compaction keeps every row and the checkpoint; expiry drops snapshots and their files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from tidelake import lake
from tidelake.config import Pipeline, loads
from tidelake.lake import maintenance
from tidelake.lake.catalog import load_table
from tidelake.lake.maintenance import Maintainer, MaintenancePolicy
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.sinks.lake import LakeSink, LakeSinkConfig

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def make_sink(tmp_path: Path, **config: object) -> tuple[LakeSink, Pipeline]:
    pipeline = loads("name: demo\nflows: {}\n", tmp_path / "p.yaml")
    ctx = FlowContext(flow="f", pipeline=pipeline, metrics=FlowMetrics("f"), broker_factory=dict)  # type: ignore[arg-type]
    base = {"type": "lake", "table": "events", "maintenance": {"enabled": False}}
    sink = LakeSink(LakeSinkConfig.model_validate(base | config))
    sink.open(ctx)
    return sink, pipeline


def rows(start: int, stop: int) -> pa.Table:
    return pa.table(
        {
            "id": list(range(start, stop)),
            "ts": [T0 + timedelta(hours=7 * i) for i in range(start, stop)],
            "v": [f"v{i % 3}" for i in range(start, stop)],
            "_topic": ["t"] * (stop - start),
            "_partition": [0] * (stop - start),
            "_offset": list(range(start, stop)),
        }
    )


def data_files(table) -> list[str]:  # type: ignore[no-untyped-def]
    return [t.file.file_path for t in table.scan().plan_files()]


def sorted_rows(table) -> list[tuple[object, ...]]:  # type: ignore[no-untyped-def]
    data = table.scan().to_arrow()
    return sorted(zip(*(data.column(c).to_pylist() for c in data.column_names), strict=True))


def test_compaction_keeps_rows_and_checkpoint(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path)
    for i in range(12):
        sink.write(rows(i * 5, i * 5 + 5), {"t/0": i * 5 + 5})
    table = load_table(pipeline, "events")
    before, files_before = sorted_rows(table), data_files(table)

    result = maintenance.compact(table, min_files=2)

    after_table = load_table(pipeline, "events")
    assert sorted_rows(after_table) == before
    assert result.files_removed > result.files_added > 0
    assert len(data_files(after_table)) < len(files_before)
    assert len(before) == 60 and 0 < result.rows <= 60
    summary = after_table.current_snapshot().summary  # type: ignore[union-attr]
    assert summary is not None
    assert summary.additional_properties["tidelake.maintenance"] == "compact"
    assert make_sink(tmp_path)[0].checkpoint() == {"t/0": 60}, "checkpoint survives compaction"
    # writing continues on top of the compacted table
    sink.write(rows(60, 65), {"t/0": 65})
    ids = sorted(load_table(pipeline, "events").scan().to_arrow()["id"].to_pylist())
    assert ids == list(range(65))


def test_compaction_is_a_noop_when_files_are_few(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path, partition_by="none")
    sink.write(rows(0, 5), {"t/0": 5})
    result = lake.compact(pipeline, "events")
    assert result.files_removed == 0 and result.snapshot_id is None


def test_expire_keeps_newest_and_deletes_unreferenced_files(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path, partition_by="none")
    for i in range(10):
        sink.write(rows(i, i + 1), {"t/0": i + 1})
    table = load_table(pipeline, "events")
    maintenance.compact(table, min_files=2)
    table = load_table(pipeline, "events")
    small_files = [p for p in Path(table.location().removeprefix("file://"), "data").iterdir()]
    assert len(small_files) == 11

    result = maintenance.expire(table, keep=3)
    assert result.snapshots_expired == 8
    assert result.files_deleted > 0, "manifest lists of the expired snapshots"
    assert len(list(Path(table.location().removeprefix("file://"), "data").iterdir())) == 11, (
        "the newest kept appends still reference the small files"
    )

    result = maintenance.expire(load_table(pipeline, "events"), keep=1)
    table = load_table(pipeline, "events")
    assert len(table.snapshots()) == 1
    remaining = list(Path(table.location().removeprefix("file://"), "data").iterdir())
    assert len(remaining) == 1, "the 10 small files only expired snapshots knew are gone"
    assert sorted(table.scan().to_arrow()["id"].to_pylist()) == list(range(10))
    assert make_sink(tmp_path)[0].checkpoint() == {"t/0": 10}


def test_expire_by_age(tmp_path: Path) -> None:
    sink, pipeline = make_sink(tmp_path, partition_by="none")
    for i in range(4):
        sink.write(rows(i, i + 1), {"t/0": i + 1})
    table = load_table(pipeline, "events")
    result = lake.expire(pipeline, "events", keep=100, max_age=timedelta(0))
    assert result.snapshots_expired == 3, "everything but the current snapshot"
    assert len(load_table(pipeline, "events").snapshots()) == 1
    assert table.current_snapshot() is not None


def test_maintainer_runs_on_schedule(tmp_path: Path) -> None:
    policy = MaintenancePolicy(compact_every=5, expire_every=5, keep_snapshots=2, min_files=2)
    sink, pipeline = make_sink(tmp_path, partition_by="none", maintenance=policy.model_dump())
    assert isinstance(sink.maintainer, Maintainer)
    for i in range(10):
        sink.write(rows(i, i + 1), {"t/0": i + 1})
    table = load_table(pipeline, "events")
    assert len(table.snapshots()) <= 3
    assert len(data_files(table)) <= 2
    assert sorted(table.scan().to_arrow()["id"].to_pylist()) == list(range(10))
    assert sink.checkpoint() == {"t/0": 10}
    assert table.properties["commit.manifest-merge.enabled"] == "true"
