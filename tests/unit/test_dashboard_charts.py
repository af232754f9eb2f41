"""Panel specs from Arrow types: numbers stay numbers, times are wall-clock in the pipeline's
time zone, bars are by value and at most MAX_BARS, time bars span their bucket."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from tidelake.config import Panel
from tidelake.serve.dashboard import charts


def test_hugeint_sums_are_quantitative_numbers() -> None:
    result = duckdb.sql(
        "SELECT 'p' || (i % 3) AS product, sum(i::BIGINT) AS total FROM range(10) t(i) GROUP BY 1"
    ).to_arrow_table()
    assert pa.types.is_decimal(result.schema.field("total").type)  # DuckDB's HUGEINT
    chart = charts.build(Panel(title="t", sql="SELECT 1", chart="bar", x="product", y="total"),
                         result)  # fmt: skip
    assert chart.data.schema.field("total").type == pa.float64()
    assert chart.spec["encoding"]["y"]["type"] == "quantitative"
    assert chart.spec["encoding"]["x"]["sort"] == "-y", "no ORDER BY: largest bar first"


def test_times_are_wall_clock_in_the_time_zone_on_a_24_hour_axis() -> None:
    result = pa.table({
        "minute": pa.array([datetime(2024, 7, 1, 14, 0, tzinfo=UTC),
                            datetime(2024, 7, 1, 14, 1, tzinfo=UTC)], pa.timestamp("us", "UTC")),
        "n": [3, 4],
    })  # fmt: skip
    panel = Panel(title="t", sql="SELECT 1", chart="bar", x="minute", y="n")
    chart = charts.build(panel, result, "Europe/Paris")
    assert chart.data["minute"][0].as_py() == datetime(2024, 7, 1, 16, 0)  # UTC+2 in July
    x = chart.spec["encoding"]["x"]
    assert x["type"] == "temporal" and x["scale"] == {"type": "utc"}
    assert "%H" in x["axis"]["format"] and "%I" not in x["axis"]["format"]
    span = chart.data[charts.END][0].as_py() - chart.data["minute"][0].as_py()
    assert span.total_seconds() == 60, "a per-minute bar is a minute wide"
    assert chart.spec["mark"]["orient"] == "vertical"


def test_many_bars_become_top_n_and_other_in_the_query_order() -> None:
    result = pa.table({"k": [f"k{i:03}" for i in range(100)], "v": list(range(100, 0, -1))})
    panel = Panel(title="t", sql="SELECT k, v FROM t ORDER BY v DESC", chart="bar", x="k", y="v")
    chart = charts.build(panel, result)
    assert chart.data.num_rows == charts.MAX_BARS
    assert chart.data["k"][-1].as_py() == charts.OTHER
    kept = sum(range(100, 100 - charts.MAX_BARS + 1, -1))
    assert chart.data["v"][-1].as_py() == sum(range(1, 101)) - kept
    assert chart.spec["encoding"]["x"]["sort"] is None, "the query's order is kept"
    assert "top 24 of 100" in chart.note


def test_candlesticks_one_chart_per_symbol_with_wicks_bodies_and_lines_over_them() -> None:
    minute = [datetime(2024, 7, 1, 14, m, tzinfo=UTC) for m in (0, 1)]
    result = pa.table({
        "symbol": ["ETH", "ETH", "BTC", "BTC"],
        "minute": pa.array(minute * 2, pa.timestamp("us", "UTC")),
        "open": [10.0, 11.0, 100.0, 99.0], "high": [12.0, 11.5, 101.0, 99.5],
        "low": [9.5, 10.0, 98.0, 97.0], "close": [11.0, 10.5, 99.0, 98.0],
        "ma_1m": [10.5, 10.8, 99.5, 98.5],
    })  # fmt: skip
    panel = Panel(title="c", sql="SELECT 1", chart="candlestick", x="minute", by="symbol",
                  y=["ma_1m"])  # fmt: skip
    eth, btc = charts.candlesticks(panel, result)
    assert (eth.spec["title"], btc.spec["title"]) == ("ETH", "BTC"), "in the result's order"
    assert btc.data["close"].to_pylist() == [99.0, 98.0]
    assert eth.spec["encoding"]["x"]["type"] == "temporal"
    wick, body, line = eth.spec["layer"]
    assert (wick["mark"]["type"], body["mark"]["type"], line["mark"]["type"]) == (
        "rule",
        "bar",
        "line",
    )
    assert (wick["encoding"]["y"]["field"], wick["encoding"]["y2"]["field"]) == ("low", "high")
    assert (body["encoding"]["y"]["field"], body["encoding"]["y2"]["field"]) == ("open", "close")
    assert body["encoding"]["y"]["scale"] == {"zero": False}, "prices are not drawn from 0"
    assert body["encoding"]["color"]["condition"]["test"] == "datum.close >= datum.open"
    assert line["transform"][0]["fold"] == ["ma_1m"]


def test_heatmap_cells_colour_by_value_on_a_scale_centred_on_zero() -> None:
    result = pa.table({"a": ["x", "x", "y", "y"], "b": ["x", "y", "x", "y"],
                       "corr": [1.0, -0.2, -0.2, 1.0]})  # fmt: skip
    chart = charts.heatmap(
        Panel(title="h", sql="SELECT 1", chart="heatmap", x="a", y="b", color="corr"), result
    )
    rect, text = chart.spec["layer"]
    assert rect["mark"]["type"] == "rect" and text["mark"]["type"] == "text"
    assert rect["encoding"]["color"]["type"] == "quantitative"
    assert rect["encoding"]["color"]["scale"]["domainMid"] == 0
    assert chart.spec["encoding"]["x"]["type"] == chart.spec["encoding"]["y"]["type"] == "nominal"
