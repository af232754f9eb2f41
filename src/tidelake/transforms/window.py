"""``window``: event-time tumbling or hopping window aggregates, exactly once across restarts.

A row falls into the window ``[start, start + size)`` of its ``time`` (with ``hop``: into
the ``size / hop`` overlapping ones); numbers are epoch seconds below 1e11, else ms, and
text without an offset is UTC. Per window, ``by`` keys and source partition only
mergeable partials are kept, in the transform's DuckDB: count, sum, min, max (avg is
sum / count). The watermark is the newest event time seen minus ``allowed_lateness``; a
window is emitted once the watermark reaches its end, and when a finite source ends (a
stop emits nothing: open windows are held, below). A row for an already emitted window
is late and goes to the dead-letter topic (with ``hop``, it still counts in the windows
still open). Each batch is a few SQL statements, never a loop over rows.

Exactly once. Open windows live in memory only, so the checkpoint must not pass their
rows: ``checkpoint`` lowers each ``topic/partition`` position to the lowest ``_offset``
still in an open window, and a restarted flow re-reads from there, rebuilding them. That
re-read also returns rows of windows emitted before the crash; counting them again would
emit partial duplicates. So the same atomic checkpoint carries ``window:watermark`` and,
per partition, ``window:<topic>/<partition>``: the next offset already processed. After a
restart a row below that offset whose window ends by the stored watermark was emitted (or
dead-lettered) before and is skipped; every other row is processed as new. Offsets a
source delivers twice within a run (a rebalance seeks back) are skipped too. These
positions only move forward, and each window is emitted in the commit that moves the
checkpoint past its rows, so it lands once: the sink may append (no upsert needed).

This needs ``_topic``/``_partition``/``_offset`` on every row (a ``topic`` source adds them;
keep them through earlier transforms) and one instance of the flow (a window spans all
partitions). Without provenance the transform refuses to run unless ``exactly_once:
false``: then nothing is held back and windows still open at a stop or crash lose their
rows so far (at most once); a finite source run to its end is still exact. Partitions
are read in turns, so ``allowed_lateness`` must also cover the skew between them.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, ValidationInfo, field_validator, model_validator

from tidelake.errors import ConfigError
from tidelake.identifiers import quote
from tidelake.runtime.base import PROVENANCE, Checkpoint, ConnectorConfig, FlowContext, Transform
from tidelake.transforms.sql import BatchSQL

log = logging.getLogger(__name__)

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PARTIALS = {"count": "count", "sum": "sum", "min": "min", "max": "max", "avg": "sum count"}
_MERGE = {"count": "sum", "sum": "sum", "min": "min", "max": "max"}
_FINAL = {"avg": "sum({})::DOUBLE / nullif(sum({}), 0)"} | {
    k: v + "({})" for k, v in _MERGE.items()
}
_ZONED = r"':[0-9]{2}(\.[0-9]+)?\s*([zZ]|[+-][0-9]{2}(:?[0-9]{2})?)$'"
KEY = "window:"
"""Prefix of this transform's bookkeeping keys in the flow's checkpoint."""
NEVER = -(2**62)


def millis(text: str) -> int:
    """``500ms``, ``30s``, ``1m``, ``2h``, ``1d`` -> milliseconds."""
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (use e.g. 500ms, 30s, 1m, 2h, 1d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_aggregate(expr: str) -> tuple[str, str]:
    """``avg(age)`` -> (``avg``, ``age``)."""
    m = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", expr, re.S)
    fn, arg = (m.group(1).lower(), m.group(2).strip()) if m else ("", "")
    if fn not in _PARTIALS:
        raise ValueError(
            f"{expr!r}: unknown aggregate (use count(*), count(x), sum(x), min(x), max(x) or "
            "avg(x), where x is a column or SQL expression)"
        )
    if not arg or arg.lower().startswith("distinct") or (arg == "*" and fn != "count"):
        raise ValueError(f"{expr!r}: give one column or expression (DISTINCT is not mergeable)")
    return fn, arg


class Window(Transform):
    """Aggregate rows per event-time window and ``by`` keys; emit each window once, closed."""

    stateless = False

    class Config(ConnectorConfig):
        type: Literal["window"]
        time: str = Field(description="event-time column: timestamp, epoch s or ms, ISO 8601")
        size: str = Field(description="window length: 500ms, 30s, 1m, 1h, 1d")
        hop: str | None = Field(None, description="hopping windows: one starts every hop")
        by: list[str] = Field([], description="group keys")
        aggregates: dict[str, str] = Field(
            min_length=1, description="output column -> count(*), count/sum/min/max/avg(x)"
        )
        allowed_lateness: str = Field("0s", description="how far behind the newest event")
        exactly_once: bool = Field(
            True, description="false: accept rows without _topic/_partition/_offset"
        )

        @field_validator("size", "hop", "allowed_lateness")
        @classmethod
        def _duration(cls, v: str | None, info: ValidationInfo) -> str | None:
            if v is not None and millis(v) == 0 and info.field_name != "allowed_lateness":
                raise ValueError("must be longer than 0")
            return v

        @field_validator("aggregates")
        @classmethod
        def _aggregates(cls, v: dict[str, str]) -> dict[str, str]:
            for name, expr in v.items():
                try:
                    parse_aggregate(expr)
                except ValueError as e:
                    raise ValueError(f"{name}: {e}") from None
            return v

        @model_validator(mode="after")
        def _fits(self) -> Window.Config:
            if self.hop and millis(self.size) % millis(self.hop):
                raise ValueError(f"hop {self.hop} must divide size {self.size}")
            if clash := {"window_start", "window_end", *self.by} & set(self.aggregates):
                raise ValueError(f"aggregate names clash with other output columns: {clash}")
            return self

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.size, self.lateness = millis(config.size), millis(config.allowed_lateness)
        self.hop = millis(config.hop) if config.hop else self.size
        self.engine = BatchSQL()
        self.partials, finals = [], []  # partial state columns: (name, function, argument)
        for i, (name, expr) in enumerate(config.aggregates.items()):
            fn, arg = parse_aggregate(expr)
            self.engine.check(f"SELECT {arg} FROM batch", f"window aggregate {name}")
            cols = [(f"__p{i}_{j}", p, arg) for j, p in enumerate(_PARTIALS[fn].split())]
            finals.append(f"{_FINAL[fn].format(*(c for c, _, _ in cols))} AS {quote(name)}")
            self.partials += cols
        self.finals = ", ".join(finals)
        self.keys = "".join(f", {quote(k)}" for k in config.by)
        self.tracked: bool | None = None  # rows carry provenance (decided by the first batch)
        self.made = False  # the state table exists
        self.seen: dict[tuple[str, int], int] = {}  # next offset processed, per partition
        self.done: dict[tuple[str, int], int] = {}  # the same, as stored before this run
        self.watermark = self.restored = NEVER

    def open(self, ctx: FlowContext) -> None:
        self.ctx = ctx
        for key, value in ctx.committed().items():
            if key == KEY + "watermark":
                self.watermark = self.restored = value
            elif key.startswith(KEY):
                topic, _, part = key.removeprefix(KEY).rpartition("/")
                self.done[(topic, int(part))] = value

    def __call__(self, table: pa.Table) -> pa.Table:
        tracked = all(c in table.column_names for c in PROVENANCE)
        if self.tracked is None:
            self.tracked = tracked
            if not tracked and not self.config.exactly_once:
                log.warning(
                    "flow %s: window input has no provenance: windows open at a stop "
                    "or crash lose their rows so far",
                    self.ctx.flow,
                )
        if tracked != self.tracked or (not tracked and self.config.exactly_once):
            raise ConfigError(
                "window: every row needs _topic, _partition and _offset (a topic source adds "
                "them; keep them through earlier transforms) to stay exactly once across "
                "restarts; set exactly_once: false to accept losing open windows at a restart"
            )
        con = self.engine.con
        con.register("batch", table)
        con.register("floors", self._floors())
        try:
            return self._batch(self._millis(table.schema))
        except duckdb.Error as e:
            cols = ", ".join(table.column_names)
            raise ConfigError(f"window: query failed: {e} (batch columns: {cols})") from e
        finally:
            con.unregister("batch")
            con.unregister("floors")

    def _batch(self, ms: str) -> pa.Table:
        size, hop, before = self.size, self.hop, self.watermark
        rows = f"SELECT *, {ms} AS __ms, false AS __replay FROM batch"
        if self.tracked:  # skip offsets seen in this run; flag those processed before it
            rows = (
                f"SELECT b.*, {ms} AS __ms, coalesce(b._offset < f.__done, false) AS __replay "
                "FROM batch b LEFT JOIN floors f USING (_topic, _partition) "
                "WHERE b._offset >= coalesce(f.__seen, 0)"
            )
        self._sql(
            f"CREATE OR REPLACE TEMP TABLE __rows AS SELECT *, row_number() OVER () "
            f"AS __row FROM ({rows})"
        )
        self._sql(  # row x window; minus windows a replayed row was emitted in before
            "CREATE OR REPLACE TEMP TABLE __pairs AS SELECT * FROM (SELECT r.*, __ms - "
            f"((__ms % {hop}) + {hop}) % {hop} - k * {hop} AS __start FROM __rows r, "
            f"range({size // hop}) t(k) WHERE __ms IS NOT NULL) "
            f"WHERE NOT (__replay AND __start + {size} <= {self.restored})"
        )
        plain = "SELECT * EXCLUDE (__ms, __replay, __row) FROM __rows"
        self.ctx.dead_letter(
            self._table(f"{plain} WHERE __ms IS NULL AND NOT __replay"),
            f"window: time column {self.config.time!r} is NULL or not a timestamp",
        )
        self.ctx.dead_letter(
            self._table(
                f"{plain} WHERE __row IN (SELECT __row FROM __pairs "
                f"WHERE __start + {size} <= {before})"
            ),
            f"window: late record: its window already closed (allowed_lateness "
            f"{self.config.allowed_lateness}, watermark {_iso(before)})",
        )
        if self.tracked:
            new = "SELECT _topic, _partition, max(_offset) + 1 FROM __rows GROUP BY ALL"
            self.seen |= {(t, p): end for t, p, end in self._sql(new)}
        group = f"__start{self.keys}" + ", _topic, _partition" * bool(self.tracked)
        low = ", min(_offset) AS __low" * bool(self.tracked)
        parts = ", ".join(f"{p}({a}) AS {c}" for c, p, a in self.partials)
        fresh = (
            f"SELECT {group}{low}, {parts} FROM __pairs WHERE __start + {size} > {before} "
            "GROUP BY ALL"
        )
        if self.made:  # merge the new partials into the state, one row per group again
            fresh = f"SELECT * FROM __state UNION ALL BY NAME {fresh}"
        merged = ", ".join(f"{_MERGE[p]}({c}) AS {c}" for c, p, _ in self.partials)
        low = ", min(__low) AS __low" * bool(self.tracked)
        self._sql(
            f"CREATE OR REPLACE TABLE __state AS SELECT {group}{low}, {merged} "
            f"FROM ({fresh}) GROUP BY ALL"
        )
        self.made = True
        ((newest,),) = self._sql("SELECT max(__ms) FROM __rows")
        if newest is not None:
            self.watermark = max(self.watermark, newest - self.lateness)
        return self._emit(self.watermark)

    def _emit(self, upto: int) -> pa.Table:
        """Final rows of the windows ending by ``upto``, removed from the state."""
        if not self.made:
            return pa.table({})
        closed, k = f"__start + {self.size} <= {upto}", self.keys
        out = self._table(
            f"SELECT epoch_ms(__start) AS window_start, epoch_ms(__start + {self.size}) "
            f"AS window_end{k}, {self.finals} FROM __state WHERE {closed} "
            f"GROUP BY __start{k} ORDER BY __start{k}"
        )
        self._sql(f"DELETE FROM __state WHERE {closed}")
        for i, f in enumerate(out.schema):  # DuckDB sums integers as HUGEINT
            if pa.types.is_decimal(f.type) and f.type.scale == 0:
                out = out.set_column(i, f.name, pc.cast(out.column(i), pa.int64()))
        return out

    def _sql(self, sql: str) -> list[tuple[Any, ...]]:
        rel = self.engine.con.sql(sql)
        return rel.fetchall() if rel is not None else []

    def _table(self, sql: str) -> pa.Table:
        return self.engine.con.sql(sql).to_arrow_table()

    def _floors(self) -> pa.Table:
        keys = sorted(self.seen.keys() | self.done.keys())
        cols = {"__seen": self.seen, "__done": self.done}
        return pa.table(
            {"_topic": pa.array([t for t, _ in keys], pa.string())}
            | {"_partition": pa.array([p for _, p in keys], pa.int64())}
            | {c: pa.array([d.get(k, 0) for k in keys], pa.int64()) for c, d in cols.items()}
        )

    def _millis(self, schema: pa.Schema) -> str:
        """SQL for a row's event time in epoch milliseconds (NULL when it is not a time)."""
        name = self.config.time
        if name not in schema.names:
            raise ConfigError(
                f"window: time column {name!r} is not in the batch "
                f"(columns: {', '.join(schema.names)})"
            )
        c, t = quote(name), schema.field(name).type
        number = "CAST(CASE WHEN abs({x}) >= 1e11 THEN {x} ELSE {x} * 1000 END AS BIGINT)"
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            # via DuckDB's microsecond types: epoch_ms fails on TIMESTAMP_S/_MS/_NS
            zoned = pa.types.is_timestamp(t) and t.tz is not None
            return f"epoch_ms({c}::{'TIMESTAMPTZ' if zoned else 'TIMESTAMP'})"
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            return number.format(x=c)  # epoch seconds below 1e11 (year 5138), else ms
        text = f"{c}::VARCHAR"  # ISO 8601, UTC unless it names an offset
        return (
            f"coalesce(CASE WHEN regexp_matches({text}, {_ZONED}) "
            f"THEN epoch_ms(TRY_CAST({text} AS TIMESTAMPTZ)) "
            f"ELSE epoch_ms(TRY_CAST({text} AS TIMESTAMP)) END, "
            + number.format(x=f"TRY_CAST({text} AS DOUBLE)")
            + ")"
        )

    def checkpoint(self, positions: Checkpoint) -> Checkpoint:
        """Hold each partition at its lowest offset in an open window; add the bookkeeping."""
        if not self.tracked or not self.made:
            return positions
        held = "SELECT _topic, _partition, min(__low) FROM __state GROUP BY ALL"
        low = {f"{t}/{p}": offset for t, p, offset in self._sql(held)}
        seen = {f"{t}/{p}": offset for (t, p), offset in self.seen.items()}
        read = {k: max(v, seen.get(k, v)) for k, v in positions.items()}  # even if sought back
        out = {k: min(v, low.get(k, v)) for k, v in read.items()}
        done = self.done | {k: max(v, self.done.get(k, v)) for k, v in self.seen.items()}
        out |= {f"{KEY}{t}/{p}": v for (t, p), v in done.items()}
        return out | {KEY + "watermark": self.watermark}

    def finish(self) -> pa.Table:
        """The source ended: emit every open window; later rows for them count as late."""
        if self.made:
            ((last,),) = self._sql("SELECT max(__start) FROM __state")
            self.watermark = max(self.watermark, NEVER if last is None else last + self.size)
        return self._emit(-NEVER)


def _iso(ms: int) -> str:
    return "none" if ms <= NEVER else datetime.fromtimestamp(ms / 1000, UTC).isoformat()
