"""The query engine reuses a result only for the same query over the same table versions
(``tidelake.lake.results``)."""

from __future__ import annotations

import sqlite3

import pytest
from test_lake_query import make_sink, pipeline, rows  # noqa: F401 (the fixture)

from tidelake.config import Pipeline
from tidelake.lake import QueryEngine
from tidelake.lake.results import repeatable


def test_a_repeated_query_is_answered_again_until_a_table_it_reads_changes(
    pipeline: Pipeline,  # noqa: F811
) -> None:
    sink = make_sink(pipeline)
    sink.write(rows(0, 4), {})
    db = pipeline.path(".tidelake/pipeline.db")
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE kinds (kind TEXT, label TEXT)")
        con.execute("INSERT INTO kinds VALUES ('a', 'Alpha')")
    count = "SELECT kind, count(*) AS n FROM events GROUP BY 1 ORDER BY 1"
    joined = "SELECT label, count(*) AS n FROM events JOIN kinds USING (kind) GROUP BY 1"
    with QueryEngine(pipeline) as q:
        first, labels = q.sql(count), q.sql(joined)
        assert q.sql(count) is first and q.sql(joined) is labels  # not run again
        assert q.sql(count, params=[]) is not first  # other parameters, another result
        sink.write(rows(4, 7), {"t/0": 7})  # a commit: the table has a new version
        assert q.sql(count).to_pylist() == [{"kind": "a", "n": 4}, {"kind": "b", "n": 3}]
        with sqlite3.connect(db) as con:
            con.execute("INSERT INTO kinds VALUES ('b', 'Beta')")
        assert sorted(r["label"] for r in q.sql(joined).to_pylist()) == ["Alpha", "Beta"]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT count(*) AS n, now() AS at FROM events",
        "SELECT count(*) AS n FROM events WHERE ts > current_date - INTERVAL 1 DAY",
        "SELECT random() AS r FROM events",
        "SELECT age(ts) AS a FROM events",
        "SELECT id FROM (SELECT id, uuid() AS u FROM events)",
    ],
)
def test_queries_that_depend_on_when_they_run_are_run_every_time(
    pipeline: Pipeline,  # noqa: F811
    query: str,
) -> None:
    make_sink(pipeline).write(rows(0, 4), {})
    assert not repeatable(query)
    with QueryEngine(pipeline) as q:
        assert q.sql(query) is not q.sql(query)


def test_repeatable_queries() -> None:
    assert repeatable("SELECT date_trunc('day', ts) AS d, count(*) FROM events GROUP BY 1")
    assert repeatable("SELECT * FROM events WHERE ts > TIMESTAMP '2024-05-01' AND id = ?")
    assert not repeatable("SELEC 1")  # not parsed: not kept
