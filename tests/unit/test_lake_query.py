"""QueryEngine: lake + database tables in DuckDB, time travel, helpful errors, read-only."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from tidelake import lake
from tidelake.config import Pipeline, loads
from tidelake.errors import QueryError
from tidelake.lake import QueryEngine
from tidelake.lake.catalog import load_table
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.sinks.lake import LakeSink, LakeSinkConfig

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def make_sink(pipeline: Pipeline, table: str = "events") -> LakeSink:
    ctx = FlowContext(flow="f", pipeline=pipeline, metrics=FlowMetrics("f"), broker_factory=dict)  # type: ignore[arg-type]
    sink = LakeSink(LakeSinkConfig.model_validate({"type": "lake", "table": table}))
    sink.open(ctx)
    return sink


def rows(start: int, stop: int, **extra: list[object]) -> pa.Table:
    return pa.table(
        {
            "id": list(range(start, stop)),
            "ts": [T0 + timedelta(hours=10 * i) for i in range(start, stop)],
            "kind": [("a", "b")[i % 2] for i in range(start, stop)],
        }
        | extra
    )


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    return loads("name: demo\nflows: {}\n", tmp_path / "p.yaml")


def test_sql_over_lake_table_with_evolved_schema(pipeline: Pipeline) -> None:
    sink = make_sink(pipeline)
    sink.write(rows(0, 4), {"t/0": 4})
    sink.write(rows(4, 6, score=[1.5, 2.5]), {"t/0": 6})
    with QueryEngine(pipeline) as q:
        out = q.sql("SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY kind")
        assert out.to_pylist() == [{"kind": "a", "n": 3}, {"kind": "b", "n": 3}]
        scores = q.sql("SELECT id, score FROM lake.events ORDER BY id")["score"].to_pylist()
        assert scores == [None, None, None, None, 1.5, 2.5], "old files read the new column as NULL"
        # a new commit is visible to the next query of the same engine
        sink.write(rows(6, 7), {"t/0": 7})
        assert q.sql("SELECT count(*) AS n FROM events")["n"][0].as_py() == 7


def test_time_travel_by_snapshot_and_time(pipeline: Pipeline) -> None:
    sink = make_sink(pipeline)
    sink.write(rows(0, 3), {"t/0": 3})
    first = load_table(pipeline, "events").current_snapshot()
    assert first is not None
    time.sleep(0.01)
    sink.write(rows(3, 5), {"t/0": 5})
    with QueryEngine(pipeline) as q:
        count = "SELECT count(*) AS n FROM events"
        assert q.sql(count)["n"][0].as_py() == 5
        assert q.sql(count, as_of=first.snapshot_id)["n"][0].as_py() == 3
        at = datetime.fromtimestamp(first.timestamp_ms / 1000, UTC)
        assert q.sql(count, as_of=at)["n"][0].as_py() == 3
        assert q.sql(count, as_of=at.isoformat())["n"][0].as_py() == 3
        assert q.sql(count, as_of=T0)["n"][0].as_py() == 0, "before the table existed: empty"
        assert q.sql(count)["n"][0].as_py() == 5, "time travel does not stick"
        with pytest.raises(QueryError, match="not in the history"):
            q.sql(count, as_of=123)


def test_database_tables_are_queryable_and_joinable(pipeline: Pipeline) -> None:
    db = pipeline.path(".tidelake/pipeline.db")
    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE kinds (kind TEXT, label TEXT)")
        con.executemany("INSERT INTO kinds VALUES (?, ?)", [("a", "Alpha"), ("b", "Beta")])
    make_sink(pipeline).write(rows(0, 4), {})
    with QueryEngine(pipeline) as q:
        out = q.sql(
            "SELECT k.label, count(*) AS n FROM events e JOIN db.kinds k USING (kind) "
            "GROUP BY 1 ORDER BY 1"
        )
        assert out.to_pylist() == [{"label": "Alpha", "n": 2}, {"label": "Beta", "n": 2}]
        assert q.sql("SELECT count(*) AS n FROM kinds")["n"][0].as_py() == 2
        infos = {t.name: t for t in q.tables()}
        assert infos["kinds"].kind == "db" and infos["kinds"].rows == 2
        assert infos["events"].kind == "lake" and infos["events"].rows == 4
        assert infos["events"].partition_spec == "day(ts)"
        assert infos["events"].partitions == 2 and infos["events"].snapshots == 1


def test_errors_are_query_errors_with_hints(pipeline: Pipeline) -> None:
    make_sink(pipeline).write(rows(0, 1), {})
    with QueryEngine(pipeline) as q:
        with pytest.raises(QueryError, match="lake tables: events"):
            q.sql("SELECT * FROM nope")
        with pytest.raises(QueryError, match='syntax error at or near "SELEC"'):
            q.sql("SELEC 1")
        with pytest.raises(QueryError, match="read-only"):
            q.sql("DROP VIEW events")
        with pytest.raises(QueryError, match="read-only"):
            q.sql("SELECT 1; SELECT 2")
        with pytest.raises(QueryError):
            q.sql("SELECT * FROM read_text('/etc/passwd')")
        with pytest.raises(QueryError, match="no table"):
            q.describe("nope")


def test_lake_and_db_prefixes_name_their_store_and_a_bare_shared_name_is_an_error(
    pipeline: Pipeline,
) -> None:
    db = pipeline.path(".tidelake/pipeline.db")
    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE events (id INTEGER)")
        con.executemany("INSERT INTO events VALUES (?)", [(i,) for i in range(10)])
        con.execute("CREATE TABLE only_db (id INTEGER)")
    make_sink(pipeline).write(rows(0, 4), {})
    count = "SELECT count(*) AS n FROM {}"
    with QueryEngine(pipeline) as q:
        for _ in range(2):  # the second round reuses the bound views
            assert q.sql(count.format("db.events"))["n"][0].as_py() == 10
            assert q.sql(count.format("lake.events"))["n"][0].as_py() == 4
            assert q.sql(count.format("only_db"))["n"][0].as_py() == 0
            both = "SELECT (SELECT count(*) FROM lake.events) + (SELECT count(*) FROM db.events)"
            assert q.sql(both).column(0)[0].as_py() == 14
            with pytest.raises(QueryError, match="write lake.events or db.events"):
                q.sql(count.format("events"))


def test_tables_and_describe(pipeline: Pipeline) -> None:
    sink = make_sink(pipeline)
    sink.write(rows(0, 3), {"t/0": 3})
    sink.write(rows(3, 4), {"t/0": 4})
    (info,) = lake.tables(pipeline)
    assert (info.name, info.rows, info.files, info.snapshots) == ("events", 4, 2, 2)
    assert [c.name for c in info.columns] == ["id", "ts", "kind"]
    detail = lake.describe(pipeline, "events")
    assert detail.checkpoints == {"f": {"t/0": 4}}
    assert [h.added_rows for h in detail.history] == [3, 1]
    assert detail.history[-1].flow == "f"
    assert detail.properties["commit.retry.num-retries"] == "0"


def test_fan_out_tables_all_visible(pipeline: Pipeline) -> None:
    make_sink(pipeline, table="ev_{kind}").write(rows(0, 5), {"t/0": 5})
    with QueryEngine(pipeline) as q:
        out = q.sql("SELECT (SELECT count(*) FROM ev_a) AS a, (SELECT count(*) FROM ev_b) AS b")
        assert out.to_pylist() == [{"a": 3, "b": 2}]


def test_scan_path_used_for_s3_and_delete_files(pipeline: Pipeline) -> None:
    sink = make_sink(pipeline)
    sink.write(rows(0, 4), {})
    with QueryEngine(pipeline) as q:
        q.warehouse = "s3://bucket/lake"  # DuckDB cannot read S3 offline: pyiceberg scans instead
        assert q.sql("SELECT count(*) AS n FROM events")["n"][0].as_py() == 4
        sink.write(rows(4, 5), {})
        assert q.sql("SELECT max(id) AS m FROM events")["m"][0].as_py() == 4


def test_renamed_column_reads_old_files_by_field_id(pipeline: Pipeline) -> None:
    """Files match the schema by column name, unless a column was renamed: then the
    values of files written before the rename still appear under the new name."""
    sink = make_sink(pipeline)
    sink.write(rows(0, 2), {})
    with load_table(pipeline, "events").update_schema() as update:
        update.rename_column("kind", "category")
    sink.close()
    sink = make_sink(pipeline)
    sink.write(rows(2, 3).rename_columns(["id", "ts", "category"]), {})
    with QueryEngine(pipeline) as q:
        out = q.sql("SELECT id, category FROM events ORDER BY id").to_pylist()
    assert [(r["id"], r["category"]) for r in out] == [(0, "a"), (1, "b"), (2, "a")]
