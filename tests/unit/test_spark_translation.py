"""``engine: spark``: transform SQL transpiles from DuckDB to Spark SQL, and what does not is a
``tidelake validate`` error naming file, line and construct (no JVM needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidelake.cli import app
from tidelake.spark.sql import Untranslatable, expression_to_spark, to_spark

pytest.importorskip("pyspark")
runner = CliRunner()


def test_the_users_scenario_query_translates() -> None:
    query = (
        'SELECT name."last" || \' \' || name."first" AS full_name, '
        "split_part(email, '@', 2) AS domain_name, CAST(registered.date AS VARCHAR) AS d, "
        "age // 10 AS decade FROM batch"
    )
    assert to_spark(query, "v1") == (
        "SELECT name.`last` || ' ' || name.`first` AS full_name, "
        "SPLIT_PART(email, '@', 2) AS domain_name, CAST(registered.date AS STRING) AS d, "
        "age DIV 10 AS decade FROM v1"
    )
    assert expression_to_spark("list_transform(xs, x -> x + 1)") == "TRANSFORM(xs, x -> x + 1)"


@pytest.mark.parametrize(
    ("sql", "construct"),
    [
        ("SELECT list_reduce(xs, (a, b) -> a + b) FROM batch", "list_reduce()"),
        ("SELECT * FROM batch ASOF JOIN prices USING (ts)", "ASOF JOIN"),
        ("SELECT COLUMNS('price_.*') FROM batch", "COLUMNS('price_.*')"),
    ],
)
def test_a_construct_spark_lacks_is_refused_by_name(sql: str, construct: str) -> None:
    with pytest.raises(Untranslatable, match="does not translate to Spark SQL") as e:
        to_spark(sql)
    assert construct in str(e.value)


PIPELINE = """\
name: sparky
broker: kafka://127.0.0.1:9
flows:
  totals:
    engine: spark
    source: {type: topic, topic: orders}
    transforms:
      - {type: rename, columns: {amount: total}}
      - type: sql
        query: SELECT list_reduce(items, (a, b) -> a + b) AS n, total FROM batch
      - {type: flatten, parse_json: [extra]}
    sink: {type: console}
"""


def test_validate_names_file_line_and_construct_of_what_spark_cannot_run(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.replace(str(path), "P").splitlines()
    assert any(
        line.startswith(
            "P:10: flows.totals.transforms.1.query: does not translate to Spark SQL: "
            "list_reduce() (no Spark SQL function of that name)"
        )
        for line in lines
    ), lines
    assert any(
        line.startswith("P:11: flows.totals.transforms.2.parse_json: flatten parse_json: does not")
        for line in lines
    ), lines
    assert any(
        line.startswith(
            "P:12: flows.totals.sink.type: engine: spark writes lake, table, topic sinks; "
            "a 'console' sink"
        )
        for line in lines
    ), lines
    fixed = PIPELINE.replace("list_reduce(items, (a, b) -> a + b)", "size(items)")
    fixed = fixed.replace("      - {type: flatten, parse_json: [extra]}\n", "")
    fixed = fixed.replace("{type: console}", "{type: table, table: totals}")
    path.write_text(fixed)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("window", "problem"),
    [
        ("{time: ts, gap: 30s, aggregates: {n: count(*)}}", "window gap: does not translate"),
        ("{time: ts, size: 1m, aggregates: {p: 'vwap(price, qty)'}}", "'vwap(price, qty)' does"),
        ("{time: ts, size: 1m, aggregates: {n: count(*)}}", None),
        ("{time: ts, size: 1m, every: 30s, aggregates: {s: sum(qty)}}", None),
    ],
)
def test_windows_spark_has_translate_and_the_others_are_named(window: str, problem: str) -> None:
    from tidelake.config import loads
    from tidelake.spark.translate import untranslatable

    pipeline = loads(
        "name: w\nflows:\n  f:\n    engine: spark\n    source: {type: topic, topic: t}\n"
        f"    transforms:\n      - {{type: window, {window[1:-1]}}}\n"
        "    sink: {type: lake, table: out}\n"
    )
    found = [message for _, message in untranslatable(pipeline.flows["f"])]
    assert found == [] if problem is None else problem in found[0], found


@pytest.mark.parametrize(
    ("flow", "location", "problem"),
    [
        (
            "source: {type: file, path: 's3://b/in/*.jsonl'}\n    transforms: []",
            ("source", "path"),
            "engine: spark reads files from local paths, not S3",
        ),
        (
            "source: {type: file, path: 'in/**/*.csv'}\n    transforms: []",
            ("source", "path"),
            "engine: spark does not expand **",
        ),
        (
            "source: {type: file, path: in, min_age: 5}\n    transforms: []",
            ("source", "min_age"),
            "Spark's file stream has no minimum file age",
        ),
        (
            "source: {type: topic, topic: t}\n    transforms:\n"
            "      - {type: validate, rules: [{column: n, min: 0}]}\n"
            "      - {type: window, time: ts, size: 1m, aggregates: {n: count(*)}}",
            ("transforms", 1, "type"),
            "a window cannot follow a validate",
        ),
        (
            "source: {type: file, path: in, watch: true}\n    transforms:\n"
            "      - {type: window, time: ts, size: 1m, aggregates: {n: count(*)}}\n"
            "      - {type: validate, rules: [{column: n, min: 0}]}",
            None,
            None,
        ),
    ],
)
def test_file_sources_and_validate_translate_within_spark_s_limits(
    flow: str, location: tuple[object, ...] | None, problem: str | None
) -> None:
    from tidelake.config import loads
    from tidelake.spark.translate import untranslatable

    sink = "sink: {type: lake, table: o}"
    pipeline = loads(f"name: f\nflows:\n  f:\n    engine: spark\n    {flow}\n    {sink}\n")
    found = list(untranslatable(pipeline.flows["f"]))
    if problem is None:
        assert found == []
    else:
        assert [loc for loc, _ in found] == [location] and problem in found[0][1], found
