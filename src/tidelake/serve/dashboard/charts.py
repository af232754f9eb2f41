"""Vega-Lite specs for dashboard panels, derived from the result's Arrow types.

A panel's chart is right by construction, whatever the SQL returns:

- integers, floats, decimals and DuckDB's HUGEINT (``sum`` of a BIGINT, which reaches
  Arrow as ``decimal128(38, 0)``) are **quantitative**: decimals are cast to float64 so
  the browser receives numbers, never text;
- timestamps and dates are **temporal**, drawn as wall-clock time in the pipeline's
  ``time_zone`` on a 24-hour clock; strings and booleans are **nominal**; on a bar chart
  a numeric x (an age group, a year) is **ordinal**, one bar per value;
- bars are sorted by value (largest first) unless the query has its own ``ORDER BY``;
- a bar chart over categories draws at most ``MAX_BARS`` bars: the top ``MAX_BARS - 1``
  and one ``other`` bar summing the rest;
- bars over time span their bucket (a per-minute bar is a minute wide), the bucket
  being the smallest step between the x values.

Everything here is pure (no Streamlit), so tests check the spec a browser would draw.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
import sqlglot.errors

from tidelake.config import Panel

MAX_BARS = 25
OTHER = "other"
END = "__end"  # the column holding a time bar's right edge
FieldType = Literal["quantitative", "temporal", "nominal", "ordinal"]


@dataclass(frozen=True)
class Chart:
    """A Vega-Lite spec (without data), the rows it draws, and a caption (or "")."""

    spec: dict[str, Any]
    data: pa.Table
    note: str = ""


def field_type(t: pa.DataType) -> FieldType:
    """How Vega-Lite should read a column of Arrow type ``t``."""
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "quantitative"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "temporal"
    return "nominal"


def for_display(table: pa.Table, time_zone: str) -> pa.Table:
    """Decimals (and HUGEINT) as float64; times as naive wall-clock time in ``time_zone``.

    Naive timestamps are UTC (the query engine runs in UTC). The chart reads the wall-clock
    values on a UTC scale, so the browser's own time zone never shifts them.
    """
    columns = []
    for column, f in zip(table.columns, table.schema, strict=True):
        t = f.type
        if pa.types.is_decimal(t):
            column = column.cast(pa.float64())
        elif pa.types.is_date(t):
            column = column.cast(pa.timestamp("ms"))
            t = column.type
        if pa.types.is_timestamp(t):
            aware = column if t.tz else column.cast(pa.timestamp(t.unit, "UTC"))
            column = pc.local_timestamp(aware.cast(pa.timestamp(t.unit, time_zone)))
            column = column.cast(pa.timestamp("ms"))
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


@functools.lru_cache(maxsize=256)
def orders_rows(sql: str) -> bool:
    """Whether the query's outermost SELECT has an ORDER BY (its row order is meant)."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError:
        return False
    return tree.args.get("order") is not None


def _field(name: str) -> str:
    """A column name as a Vega-Lite field (dots and brackets would mean nesting)."""
    return name.replace("\\", "\\\\").replace(".", "\\.").replace("[", "\\[").replace("]", "\\]")


def _ys(panel: Panel, data: pa.Table) -> list[str]:
    if isinstance(panel.y, str):
        return [panel.y]
    if panel.y:
        return list(panel.y)
    return [c for c, f in zip(data.column_names, data.schema, strict=True) if c != panel.x
            and field_type(f.type) == "quantitative"]  # fmt: skip


def _time_format(data: pa.Table, x: str, step_ms: int | None) -> str:
    """24-hour axis labels, as fine as the axis needs (a few minutes get seconds)."""
    lo, hi = pc.min(data[x]).as_py(), pc.max(data[x]).as_py()
    span = (hi - lo).total_seconds() + (step_ms or 0) / 1000 if lo and hi else 0.0
    if span >= 86_400:
        return "%Y-%m-%d %H:%M"
    return "%H:%M:%S" if span <= 600 or (step_ms or 60_000) < 60_000 else "%H:%M"


def _step_ms(data: pa.Table, x: str) -> int:
    """The smallest step between distinct x times (one minute for a single value)."""
    values = pc.unique(data[x].drop_null()).cast(pa.int64())
    values = pc.take(values, pc.sort_indices(values))
    if len(values) < 2:
        return 60_000
    steps = pc.subtract(values[1:], values[:-1])
    return int(pc.min(steps).as_py())


def _top(data: pa.Table, x: str, ys: list[str], ordered: bool) -> tuple[pa.Table, str]:
    """At most MAX_BARS rows: the first (query order) or largest MAX_BARS - 1, then 'other'."""
    if data.num_rows <= MAX_BARS:
        return data, ""
    if not ordered:
        data = data.take(pc.sort_indices(data, [(ys[0], "descending")], null_placement="at_end"))
    keep, rest = data.slice(0, MAX_BARS - 1), data.slice(MAX_BARS - 1)
    other: dict[str, Any] = {c: None for c in data.column_names}
    other[x] = OTHER
    for y in ys:
        other[y] = pc.sum(rest[y]).as_py()
    head = keep.cast(keep.schema.set(keep.schema.get_field_index(x), pa.field(x, pa.string())))
    tail = pa.Table.from_pylist([other], schema=head.schema)
    note = f"top {MAX_BARS - 1} of {data.num_rows:,} {x} values; {OTHER} sums the remaining "
    return pa.concat_tables([head, tail]), note + f"{rest.num_rows:,}"


def build(panel: Panel, result: pa.Table, time_zone: str = "UTC") -> Chart:
    """The chart of a line, bar, area or scatter panel for a query result.

    Raises ValueError naming the missing columns when ``x``/``y`` are not in the result.
    """
    data = for_display(result, time_zone)
    ys = _ys(panel, data)
    missing = [c for c in [panel.x or "", *ys] if c and c not in data.column_names]
    if missing:
        raise ValueError(
            f"column {', '.join(map(repr, missing))} is not in the result "
            f"(columns: {', '.join(data.column_names)})"
        )
    if not ys:
        raise ValueError(f"a {panel.chart} panel needs y: a numeric column of its result")
    if panel.x is None:
        raise ValueError(
            f"a {panel.chart} panel needs x: (columns: {', '.join(data.column_names)})"
        )
    x = panel.x
    xtype = field_type(data.schema.field(x).type)
    ordered = orders_rows(panel.sql)
    bar = panel.chart == "bar"
    note = ""
    xenc: dict[str, Any] = {"field": _field(x), "title": x}
    encoding: dict[str, Any] = {}
    if xtype == "temporal":
        step = _step_ms(data, x) if data.num_rows else None
        fmt = _time_format(data, x, step)
        xenc |= {"type": "temporal", "scale": {"type": "utc"}, "axis": {"format": fmt}}
        if bar and step:
            end = pc.add(data[x].cast(pa.int64()), step).cast(pa.timestamp("ms"))
            data = data.append_column(END, end)
            encoding["x2"] = {"field": END}
    elif bar:
        data, note = _top(data, x, ys, ordered)
        sort: Any = None if ordered or note else "-y"
        xenc |= {"type": "ordinal" if xtype == "quantitative" else "nominal", "sort": sort}
    else:
        xenc["type"] = xtype
    value = "value" if len(ys) > 1 else _field(ys[0])
    yenc: dict[str, Any] = {"field": value, "type": "quantitative", "title": ", ".join(ys)}
    encoding |= {"x": xenc, "y": yenc}
    tooltip = [{"field": _field(x), "type": xenc["type"], "title": x}]
    if xtype == "temporal":
        tooltip[0] |= {"format": xenc["axis"]["format"], "formatType": "utc"}
    spec: dict[str, Any] = {"mark": {"type": "point" if panel.chart == "scatter" else panel.chart}}
    if "x2" in encoding:
        spec["mark"]["orient"] = "vertical"  # x..x2 alone would make it a horizontal bar
    if len(ys) > 1:
        spec["transform"] = [{"fold": [_field(y) for y in ys], "as": ["series", "value"]}]
        encoding["color"] = {"field": "series", "type": "nominal", "title": None}
        tooltip += [
            {"field": "series", "type": "nominal"},
            {"field": "value", "type": "quantitative"},
        ]
    else:
        tooltip.append({"field": value, "type": "quantitative", "title": ys[0]})
    if panel.chart == "line":
        spec["mark"]["point"] = data.num_rows < 3  # a single minute still shows
    encoding["tooltip"] = tooltip
    spec["encoding"] = encoding
    return Chart(spec, data, note)


OHLC = ("open", "high", "low", "close")
UP, DOWN = "#26a69a", "#ef5350"


def _need(data: pa.Table, columns: list[str]) -> None:
    if missing := [c for c in columns if c not in data.column_names]:
        raise ValueError(
            f"column {', '.join(map(repr, missing))} is not in the result "
            f"(columns: {', '.join(data.column_names)})"
        )


def candlesticks(panel: Panel, result: pa.Table, time_zone: str = "UTC") -> list[Chart]:
    """One candlestick chart per ``by`` value (in the result's order of first appearance):
    a wick from ``low`` to ``high`` and a body from ``open`` to ``close`` per ``x`` time,
    green when it closed up, with the ``y`` columns (moving averages) as lines over it."""
    data = for_display(result, time_zone)
    ys = [panel.y] if isinstance(panel.y, str) else list(panel.y or [])
    x = panel.x or ""
    _need(data, [x, *OHLC, *ys, *([panel.by] if panel.by else [])])
    if field_type(data.schema.field(x).type) != "temporal":
        raise ValueError(f"a candlestick panel needs a time x: {x!r} is not one")
    groups = pc.unique(data[panel.by]).to_pylist() if panel.by else [None]
    out = []
    for group in groups:
        part = data.filter(pc.equal(data[panel.by], group)) if panel.by else data
        fmt = _time_format(part, x, _step_ms(part, x))
        xenc = {"field": _field(x), "type": "temporal", "title": x, "scale": {"type": "utc"},
                "axis": {"format": fmt}}  # fmt: skip
        price = {"type": "quantitative", "scale": {"zero": False}, "title": "price"}
        tip = [{"field": _field(x), "type": "temporal", "format": fmt, "formatType": "utc"}]
        tip += [{"field": c, "type": "quantitative"} for c in OHLC]
        body = {"condition": {"test": "datum.close >= datum.open", "value": UP}, "value": DOWN}
        layers: list[dict[str, Any]] = [
            {"mark": {"type": "rule"}, "encoding": {"y": {"field": "low"} | price,
                                                    "y2": {"field": "high"}}},
            {"mark": {"type": "bar"}, "encoding": {"y": {"field": "open"} | price,
                                                   "y2": {"field": "close"}, "color": body,
                                                   "tooltip": tip}},
        ]  # fmt: skip
        if ys:
            layers.append({
                "transform": [{"fold": [_field(y) for y in ys], "as": ["series", "value"]}],
                "mark": {"type": "line"},
                "encoding": {"y": {"field": "value"} | price,
                             "strokeDash": {"field": "series", "type": "nominal", "title": None}},
            })  # fmt: skip
        spec = {"layer": layers, "encoding": {"x": xenc}}
        if group is not None:
            spec["title"] = str(group)
        out.append(Chart(spec, part))
    return out


def heatmap(panel: Panel, result: pa.Table, time_zone: str = "UTC") -> Chart:
    """A cell per (``x``, ``y``) pair, coloured by ``color`` on a diverging scale centred on
    0 (a correlation matrix), with the value written in it."""
    data = for_display(result, time_zone)
    y = panel.y if isinstance(panel.y, str) else None
    if not (panel.x and y and panel.color):
        raise ValueError("a heatmap panel needs x, y (one column each) and color")
    _need(data, [panel.x, y, panel.color])
    value = {"field": _field(panel.color), "type": "quantitative", "title": panel.color}
    spec = {
        "encoding": {
            "x": {"field": _field(panel.x), "type": "nominal", "title": None},
            "y": {"field": _field(y), "type": "nominal", "title": None},
        },
        "layer": [
            {"mark": {"type": "rect"},
             "encoding": {"color": value | {"scale": {"scheme": "redblue", "domainMid": 0,
                                                      "reverse": True}},
                          "tooltip": [{"field": _field(panel.x)}, {"field": _field(y)}, value]}},
            {"mark": {"type": "text"}, "encoding": {"text": value | {"format": ".2f"}}},
        ],
    }  # fmt: skip
    return Chart(spec, data)


__all__ = [
    "MAX_BARS",
    "OTHER",
    "Chart",
    "build",
    "candlesticks",
    "field_type",
    "for_display",
    "heatmap",
    "orders_rows",
]
