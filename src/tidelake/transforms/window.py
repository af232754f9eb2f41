"""``window``: event-time window aggregates, exactly once across restarts.

Three kinds, chosen by which length is given:

- ``size``: tumbling windows ``[start, start + size)`` of a row's ``time``; with ``every``
  (or its older name ``hop``) sliding ones, the ``size / every`` overlapping windows that
  start every ``every``. Per window, ``by`` keys and source partition only mergeable
  partials are kept (count, sum, min, max; avg and vwap are two sums; first and last keep
  the value at the lowest or highest time).
- ``over``: per-row moving aggregates, what a trader calls a moving average: each row is
  emitted with the aggregates over the rows of its ``by`` keys in the last ``over``
  (``5m``: event times in ``(t - 5m, t]``) or the last ``N rows`` (by time, then offset).
  An aggregate may name its own frame: ``avg(price) over 1m``. The rows still needed as
  context are kept.
- ``gap``: session windows: the rows of a key whose times lie less than ``gap`` apart form
  one session ``[first, last + gap)``. Open sessions keep their rows.

Numbers are epoch seconds below 1e11, else ms, and text without an offset is UTC. The
watermark is the newest event time seen minus ``allowed_lateness``; a window or session is
emitted once the watermark reaches its end, a moving row once the watermark passes its time,
and everything when a finite source ends (a stop emits nothing: open state is held, below).
A row for an already emitted window, or (moving and session) older than the watermark, is
late and goes to the dead-letter topic (with ``every``, it still counts in the windows still
open; a late moving row still counts as context for rows not yet emitted). Each batch is a
few SQL statements in the transform's DuckDB, never a loop over rows.

Exactly once. State lives in memory only, so the checkpoint must not pass its rows:
``checkpoint`` lowers each ``topic/partition`` position to the lowest ``_offset`` still in
the state, and a restarted flow re-reads from there, rebuilding it. That re-read also
returns rows emitted before the crash; counting them again would emit duplicates. So the
same atomic checkpoint carries ``window:watermark`` and, per partition,
``window:<topic>/<partition>``: the next offset already processed. After a restart a row
below that offset whose window ends by the stored watermark (moving: whose time is before
it) was emitted (or dead-lettered) before and is skipped (moving: kept as context only); a
re-read session that ends by the stored watermark was emitted and is dropped; every other
row is processed as new. Nothing is emitted until the re-read reaches that offset on every
held partition (what is complete is unknown before). Offsets a source delivers twice within
a run (a rebalance seeks back) are skipped too. These positions only move forward, and each
result is emitted in the commit that moves the checkpoint past its rows, so it lands once:
the sink may append (no upsert needed). One limit: a late row re-read after a crash cannot
be told from the rows of a still-open session, so it may then count in a session within
``gap`` of it (it is in the dead letters too); rows within ``allowed_lateness`` are always
exact.

This needs ``_topic``/``_partition``/``_offset`` on every row (a ``topic`` source adds them;
keep them through earlier transforms; moving rows keep them) and one instance of the flow
(a window spans all partitions). Without provenance the transform refuses to run unless
``exactly_once: false``: then nothing is held back and state still open at a stop or crash
loses its rows so far (at most once); a finite source run to its end is still exact.
Partitions are read in turns, so ``allowed_lateness`` must also cover the skew between them.

Several workers (``partitioned: true``, for an input topic keyed by the ``by`` columns, so
each key lives in one partition). Windows, moving frames and sessions are then kept per
source partition too, each partition has its own watermark (its newest event time minus
``allowed_lateness``: Kafka Streams' per-task stream time) and the same bookkeeping, stored
per partition as ``window:<topic>/<partition>`` and ``window:watermark:<topic>/<partition>``
(no global ``window:watermark``), only for the partitions whose positions the worker stores.
The runner tells the transform when partitions move (``claim``: restore their bookkeeping
from the stored checkpoint, re-read as after a restart; ``release``, after their last flush:
drop their rows). What is emitted then depends only on each partition's rows, not on which
worker holds it, so N workers equal one. A key spread over partitions yields one result per
partition.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, ValidationInfo, field_validator, model_validator

from tidelake.errors import ConfigError
from tidelake.identifiers import quote
from tidelake.runtime.base import PROVENANCE, Checkpoint, ConnectorConfig, FlowContext, Transform
from tidelake.runtime.positions import is_partition
from tidelake.transforms.sql import BatchSQL

log = logging.getLogger(__name__)

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_AGGREGATES: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    # function -> ((partial over rows, merge of partial columns {0}, {1}), ...), combination
    "count": ((("count({a})", "sum({0})"),), "{0}"),
    "sum": ((("sum({a})", "sum({0})"),), "{0}"),
    "min": ((("min({a})", "min({0})"),), "{0}"),
    "max": ((("max({a})", "max({0})"),), "{0}"),
    "avg": (
        (("sum({a})", "sum({0})"), ("count({a})", "sum({1})")),
        "({0})::DOUBLE / nullif({1}, 0)",
    ),
    "first": ((("arg_min({a}, __ms)", "arg_min({0}, {1})"), ("min(__ms)", "min({1})")), "{0}"),
    "last": ((("arg_max({a}, __ms)", "arg_max({0}, {1})"), ("max(__ms)", "max({1})")), "{0}"),
    "vwap": (
        (("sum(({a}) * ({b}))", "sum({0})"), ("sum({b})", "sum({1})")),
        "({0})::DOUBLE / nullif({1}, 0)",
    ),
}
_ZONED = r"':[0-9]{2}(\.[0-9]+)?\s*([zZ]|[+-][0-9]{2}(:?[0-9]{2})?)$'"
KEY = "window:"
"""Prefix of this transform's bookkeeping keys in the flow's checkpoint."""
MARK = KEY + "watermark:"
"""Prefix of a partition's watermark (``partitioned``): ``window:watermark:<topic>/<partition>``."""
NEVER = -(2**62)


def millis(text: str) -> int:
    """``500ms``, ``30s``, ``1m``, ``2h``, ``1d`` -> milliseconds."""
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (use e.g. 500ms, 30s, 1m, 2h, 1d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Frame:
    """A moving frame: the last ``length`` ms of event time, or the last ``length`` rows."""

    length: int
    rows: bool

    @classmethod
    def parse(cls, text: str) -> Frame:
        """``5m`` or ``20 rows``."""
        m = re.fullmatch(r"\s*(\d+)\s*rows?\s*", text)
        frame = cls(int(m.group(1)), True) if m else cls(millis(text), False)
        if frame.length == 0:
            raise ValueError(f"{text!r}: must be longer than 0")
        return frame

    def sql(self, keys: str, order: str) -> str:
        part = f"PARTITION BY {keys} " if keys else ""
        if self.rows:
            return f"({part}ORDER BY __ms, {order} ROWS {self.length - 1} PRECEDING)"
        return f"({part}ORDER BY __ms RANGE BETWEEN {self.length - 1} PRECEDING AND CURRENT ROW)"


@dataclass(frozen=True)
class Aggregate:
    """One declared aggregate: ``avg(price)``, ``vwap(price, volume)``, ``avg(x) over 1m``."""

    fn: str
    args: tuple[str, ...]
    over: Frame | None = None

    @classmethod
    def parse(cls, expr: str) -> Aggregate:
        m = re.fullmatch(r"\s*(\w+)\s*\((.*)\)(?:\s+over\s+(.+?))?\s*", expr, re.S | re.I)
        fn, arg = (m.group(1).lower(), m.group(2).strip()) if m else ("", "")
        if fn not in _AGGREGATES:
            raise ValueError(
                f"{expr!r}: unknown aggregate (use count(*), count(x), sum(x), min(x), max(x), "
                "avg(x), first(x), last(x) or vwap(price, volume), where x is a column or SQL "
                "expression, optionally followed by `over 1m` or `over 20 rows`)"
            )
        args = tuple(a.strip() for a in _split_args(arg))
        if fn == "vwap" and len(args) != 2:
            raise ValueError(f"{expr!r}: vwap takes a price and a volume: vwap(price, volume)")
        if fn != "vwap" and len(args) != 1:
            args = (arg,)  # one expression that contains commas, e.g. coalesce(a, b)
        if not arg or arg.lower().startswith("distinct") or (arg == "*" and fn != "count"):
            raise ValueError(f"{expr!r}: give one column or expression (DISTINCT is not mergeable)")
        return cls(fn, args, Frame.parse(m.group(3)) if m and m.group(3) else None)

    def partials(self) -> list[str]:
        """SQL of this aggregate's mergeable partials over rows."""
        return [p.format(a=self.args[0], b=self.args[-1]) for p, _ in _AGGREGATES[self.fn][0]]

    def merged(self, columns: list[str]) -> str:
        """SQL combining partial ``columns`` (over groups of partials) into the result."""
        parts, combine = _AGGREGATES[self.fn]
        return combine.format(*(m.format(*columns) for _, m in parts))

    def over_rows(self, window: str = "") -> str:
        """SQL of the result over rows: a GROUP BY aggregate, or with ``window`` a moving one."""
        suffix = f" OVER {window}" if window else ""
        return _AGGREGATES[self.fn][1].format(*(p + suffix for p in self.partials()))


def _split_args(text: str) -> list[str]:
    """Split at the commas outside parentheses and quotes."""
    out, depth, quoted, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quoted:
            quoted = "" if ch == quoted else quoted
        elif ch in "'\"":
            quoted = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    return [*out, text[start:]]


class Window(Transform):
    """Aggregate rows per event-time window, moving frame or session and ``by`` keys; emit
    each result once, final."""

    stateless = False

    class Config(ConnectorConfig):
        type: Literal["window"]
        time: str = Field(description="event-time column: timestamp, epoch s or ms, ISO 8601")
        size: str | None = Field(
            None, description="tumbling or sliding window length: 500ms, 30s, 1m, 1h, 1d"
        )
        every: str | None = Field(None, description="sliding windows: one starts every `every`")
        hop: str | None = Field(None, description="the older name of `every`")
        over: str | None = Field(
            None, description="per-row moving aggregates over the last `5m` or `20 rows`"
        )
        gap: str | None = Field(None, description="session windows: a gap this long ends one")
        by: list[str] = Field([], description="group keys")
        aggregates: dict[str, str] = Field(
            min_length=1,
            description="output column -> count(*), count/sum/min/max/avg/first/last(x), "
            "vwap(price, volume); moving: optionally `over 1m`",
        )
        allowed_lateness: str = Field("0s", description="how far behind the newest event")
        exactly_once: bool = Field(
            True, description="false: accept rows without _topic/_partition/_offset"
        )
        partitioned: bool = Field(
            False,
            description="the input topic is keyed by the `by` columns: windows and watermark "
            "per source partition, so several workers equal one",
        )

        @field_validator("size", "every", "hop", "gap", "allowed_lateness")
        @classmethod
        def _duration(cls, v: str | None, info: ValidationInfo) -> str | None:
            if v is not None and millis(v) == 0 and info.field_name != "allowed_lateness":
                raise ValueError("must be longer than 0")
            return v

        @field_validator("over")
        @classmethod
        def _frame(cls, v: str | None) -> str | None:
            if v is not None:
                Frame.parse(v)
            return v

        @field_validator("aggregates")
        @classmethod
        def _aggregates(cls, v: dict[str, str]) -> dict[str, str]:
            for name, expr in v.items():
                try:
                    Aggregate.parse(expr)
                except ValueError as e:
                    raise ValueError(f"{name}: {e}") from None
            return v

        @model_validator(mode="after")
        def _fits(self) -> Window.Config:
            if self.every and self.hop:
                raise ValueError("give `every` or its older name `hop`, not both")
            name, self.hop = ("every", self.every) if self.every else ("hop", self.hop)
            if sum(x is not None for x in (self.size, self.over, self.gap)) != 1:
                raise ValueError(
                    "give exactly one of `size` (tumbling or, with `every`, sliding windows), "
                    "`over` (per-row moving aggregates) or `gap` (session windows)"
                )
            if self.hop and not self.size:
                raise ValueError("`every` needs `size`: a 5m window every 10s")
            if self.size and self.hop and millis(self.size) % millis(self.hop):
                raise ValueError(f"{name} {self.hop} must divide size {self.size}")
            framed = [n for n, e in self.aggregates.items() if Aggregate.parse(e).over]
            if framed and not self.over:
                raise ValueError(f"`over` in aggregates {framed} needs a moving window (`over:`)")
            outputs = set() if self.over else {"window_start", "window_end", *self.by}
            if clash := outputs & set(self.aggregates):
                raise ValueError(f"aggregate names clash with other output columns: {clash}")
            return self

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.lateness = millis(config.allowed_lateness)
        self.size = millis(config.size) if config.size else 0
        self.hop = millis(config.hop) if config.hop else self.size
        self.gap = millis(config.gap) if config.gap else 0
        self.frame = Frame.parse(config.over) if config.over else None
        self.engine = BatchSQL()
        self.aggregates = {n: Aggregate.parse(e) for n, e in config.aggregates.items()}
        self.partials: list[tuple[str, str, str]] = []  # tumbling state: (column, partial, merge)
        finals = []
        for i, (name, agg) in enumerate(self.aggregates.items()):
            for arg in agg.args:
                self.engine.check(f"SELECT {arg} FROM batch", f"window aggregate {name}")
            cols = [f"__p{i}_{j}" for j in range(len(agg.partials()))]
            finals.append(f"{agg.merged(cols)} AS {quote(name)}")
            merges = [m.format(*cols) for _, m in _AGGREGATES[agg.fn][0]]
            self.partials += zip(cols, agg.partials(), merges, strict=True)
        self.finals = ", ".join(finals)
        self.partitioned = config.partitioned
        self.part = ", _topic, _partition" * self.partitioned  # grouping beyond the keys
        self.by = ", ".join(
            [quote(k) for k in config.by] + ["_topic", "_partition"] * self.partitioned
        )
        self.keys = "".join(f", {quote(k)}" for k in config.by)
        self.tracked: bool | None = None  # rows carry provenance (decided by the first batch)
        self.made = False  # the state table exists
        self.seq = 0  # arrival order of rows without provenance (ties in moving frames)
        self.seen: dict[tuple[str, int], int] = {}  # next offset processed, per partition
        self.done: dict[tuple[str, int], int] = {}  # the same, as stored before this run
        self.replaying: set[tuple[str, int]] = set()  # partitions not yet re-read up to done
        self.watermark = self.restored = NEVER
        # partitioned: the watermark per partition, before this batch, and as stored
        self.marks: dict[tuple[str, int], int] = {}
        self.before: dict[tuple[str, int], int] = {}
        self.restored_marks: dict[tuple[str, int], int] = {}

    def open(self, ctx: FlowContext) -> None:
        self.ctx = ctx
        positions = ctx.committed()
        for key, value in positions.items():
            if key == KEY + "watermark":
                self.watermark = self.restored = value
            elif key.startswith(MARK):
                self.marks[_partition(key.removeprefix(MARK))] = value
            elif key.startswith(KEY):
                self.done[_partition(key.removeprefix(KEY))] = value
        self.restored_marks = dict(self.marks)
        self.replaying = {
            (t, p) for (t, p), end in self.done.items() if positions.get(f"{t}/{p}", end) < end
        }

    @classmethod
    def takes_several_workers(cls, config: ConnectorConfig) -> bool:
        return bool(getattr(config, "partitioned", False))

    def claim(self, keys: list[str], stored: Checkpoint) -> None:
        """``partitioned``: restart these partitions from their stored bookkeeping."""
        if not self.partitioned:
            return
        self.release(keys)
        for key in keys:
            part = _partition(key)
            if KEY + key in stored:
                self.done[part] = stored[KEY + key]
                if stored.get(key, 0) < self.done[part]:
                    self.replaying.add(part)
            if MARK + key in stored:
                self.marks[part] = self.restored_marks[part] = stored[MARK + key]

    def release(self, keys: list[str]) -> None:
        """``partitioned``: forget these partitions' rows and bookkeeping."""
        if not self.partitioned:
            return
        parts = {_partition(k) for k in keys}
        for held in (self.seen, self.done, self.marks, self.restored_marks, self.before):
            for part in parts:
                held.pop(part, None)
        self.replaying -= parts
        if self.made:
            self.engine.con.execute(
                "DELETE FROM __state WHERE concat(_topic, '/', _partition) IN "
                "(SELECT unnest(?::VARCHAR[]))",
                [keys],
            )

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
        if self.partitioned and not tracked:
            raise ConfigError(
                "window: partitioned needs _topic, _partition and _offset on every row (read "
                "from a topic source and keep them through earlier transforms)"
            )
        if self.frame and (clash := set(self.aggregates) & set(table.column_names)):
            raise ConfigError(f"window: aggregate names clash with input columns: {clash}")
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
        before, self.before = self.watermark, dict(self.marks)
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
        plain = "SELECT * EXCLUDE (__ms, __replay, __row) FROM __rows"
        self.ctx.dead_letter(
            self._table(f"{plain} WHERE __ms IS NULL AND NOT __replay"),
            f"window: time column {self.config.time!r} is NULL or not a timestamp",
        )
        if self.tracked:
            new = "SELECT _topic, _partition, max(_offset) + 1 FROM __rows GROUP BY ALL"
            self.seen |= {(t, p): end for t, p, end in self._sql(new)}
            self.replaying = {k for k in self.replaying if self.seen.get(k, 0) < self.done[k]}
        self._register_marks()
        if self.size:
            self._windows(self._at("__before", before))
        else:
            self._rows(self._at("__before", before))
        self.made = True
        ((newest,),) = self._sql("SELECT max(__ms) FROM __rows")
        if newest is not None:
            self.watermark = max(self.watermark, newest - self.lateness)
        if self.partitioned:
            newest_per = "SELECT _topic, _partition, max(__ms) FROM __rows GROUP BY ALL"
            for t, p, last in self._sql(newest_per):
                if last is not None:
                    mark = self.marks.get((t, p), self.restored)
                    self.marks[(t, p)] = max(mark, last - self.lateness)
        return self._emit(self.watermark)

    def _register_marks(self) -> None:
        """``partitioned``: table ``__marks`` of each partition's watermark (``__wm``, none
        while it is re-read up to where it was processed), before the batch and as stored."""
        if not self.partitioned:
            return
        keys = sorted(self.marks.keys() | self.before.keys() | self.restored_marks.keys())
        held = {"__wm": self.marks, "__before": self.before, "__restored": self.restored_marks}
        cols = {c: [d.get(k, self.restored) for k in keys] for c, d in held.items()}
        cols["__wm"] = [
            NEVER if k in self.replaying else cols["__wm"][i] for i, k in enumerate(keys)
        ]
        self.engine.con.register(
            "__marks",
            pa.table(
                {"__mt": pa.array([t for t, _ in keys], pa.string())}
                | {"__mp": pa.array([p for _, p in keys], pa.int64())}
                | {c: pa.array(v, pa.int64()) for c, v in cols.items()}
            ),
        )

    def _at(self, column: str, value: int) -> str:
        """SQL of a watermark: ``value``, or (``partitioned``, unless ``value`` is past every
        time) the ``column`` of ``__marks`` for the row's partition."""
        if not self.partitioned or value >= -NEVER:
            return str(value)
        return (
            f"coalesce((SELECT {column} FROM __marks WHERE __mt = _topic AND __mp = _partition)"
            f", {self.restored})"
        )

    def _late(self, rows: str, why: str) -> None:
        self.ctx.dead_letter(
            self._table(f"SELECT * EXCLUDE (__ms, __replay, __row) FROM __rows WHERE {rows}"),
            f"window: late record: {why} (allowed_lateness {self.config.allowed_lateness}, "
            f"watermark {'of its partition' if self.partitioned else _iso(self.watermark)})",
        )

    def _windows(self, before: str) -> None:
        """Tumbling and sliding windows: fold the batch into per-window partials."""
        size, hop, restored = self.size, self.hop, self._at("__restored", self.restored)
        self._sql(  # row x window; minus windows a replayed row was emitted in before
            "CREATE OR REPLACE TEMP TABLE __pairs AS SELECT * FROM (SELECT r.*, __ms - "
            f"((__ms % {hop}) + {hop}) % {hop} - __k * {hop} AS __start FROM __rows r, "
            f"range({size // hop}) t(__k) WHERE __ms IS NOT NULL) "
            f"WHERE NOT (__replay AND __start + {size} <= {restored})"
        )
        self._late(
            f"__row IN (SELECT __row FROM __pairs WHERE __start + {size} <= {before})",
            "its window already closed",
        )
        group = f"__start{self.keys}" + ", _topic, _partition" * bool(self.tracked)
        low = ", min(_offset) AS __low" * bool(self.tracked)
        parts = ", ".join(f"{p} AS {c}" for c, p, _ in self.partials)
        fresh = (
            f"SELECT {group}{low}, {parts} FROM __pairs WHERE __start + {size} > {before} "
            "GROUP BY ALL"
        )
        if self.made:  # merge the new partials into the state, one row per group again
            fresh = f"SELECT * FROM __state UNION ALL BY NAME {fresh}"
        merged = ", ".join(f"{m} AS {c}" for c, _, m in self.partials)
        low = ", min(__low) AS __low" * bool(self.tracked)
        self._sql(
            f"CREATE OR REPLACE TABLE __state AS SELECT {group}{low}, {merged} "
            f"FROM ({fresh}) GROUP BY ALL"
        )

    def _rows(self, before: str) -> None:
        """Moving frames and sessions: keep the batch's rows (late ones: moving context only)."""
        late = f"__ms < {before} AND NOT __replay"
        self._late(late, "older than the watermark")
        restored = self._at("__restored", self.restored)
        done = f"(__replay AND __ms < {restored}) OR {late}" if self.frame else "false"
        keep = "true" if self.frame else f"NOT ({late})"
        fresh = (
            f"SELECT * EXCLUDE (__row), {done} AS __done, {self.seq} + __row AS __seq "
            f"FROM __rows WHERE __ms IS NOT NULL AND {keep}"
        )
        self.seq += self._sql("SELECT count(*) FROM __rows")[0][0]
        if self.made:
            fresh = f"SELECT * FROM __state UNION ALL BY NAME {fresh}"
        self._sql(f"CREATE OR REPLACE TABLE __state AS {fresh}")

    def _emit(self, watermark: int) -> pa.Table:
        """Final rows of what is complete by ``watermark`` (``partitioned``: by each
        partition's), removed from the state."""
        if not self.made or (self.replaying and watermark < -NEVER and not self.partitioned):
            return pa.table({})  # until every held row is re-read, what is complete is unknown
        self._register_marks()
        upto = self._at("__wm", watermark)
        out = self._moving(upto) if self.frame else self._sessions(upto) if self.gap else None
        if out is None:
            closed, k = f"__start + {self.size} <= {upto}", self.keys
            out = self._table(
                f"SELECT epoch_ms(__start) AS window_start, epoch_ms(__start + {self.size}) "
                f"AS window_end{k}, {self.finals} FROM __state WHERE {closed} "
                f"GROUP BY __start{k}{self.part} ORDER BY __start{k}{self.part}"
            )
            self._sql(f"DELETE FROM __state WHERE {closed}")
        for i, f in enumerate(out.schema):  # DuckDB sums integers as HUGEINT
            if pa.types.is_decimal(f.type) and f.type.scale == 0:
                out = out.set_column(i, f.name, pc.cast(out.column(i), pa.int64()))
        return out

    def _order(self, direction: str = "") -> str:
        """Ties in event time: by offset (stable across restarts), else by arrival."""
        cols = ("_topic", "_partition", "_offset") if self.tracked else ("__seq",)
        return ", ".join(c + direction for c in cols)

    def _moving(self, upto: str) -> pa.Table:
        """Each row older than ``upto`` with its moving aggregates; then drop the rows no
        later row's frame reaches (older than the longest time frame and beyond the longest
        row frame)."""
        assert self.frame
        frames = {a.over or self.frame for a in self.aggregates.values()}
        names = {f: f"__w{i}" for i, f in enumerate(frames)}
        aggs = ", ".join(
            f"{a.over_rows(names[a.over or self.frame])} AS {quote(n)}"
            for n, a in self.aggregates.items()
        )
        windows = ", ".join(f"{n} AS {f.sql(self.by, self._order())}" for f, n in names.items())
        due = f"NOT __done AND __ms < {upto}"
        out = self._table(
            "SELECT * EXCLUDE (__ms, __done, __seq) FROM ("
            f"SELECT * EXCLUDE (__replay), {aggs} FROM __state WINDOW {windows}) "
            f"WHERE {due} ORDER BY __ms, {self._order()}"
        )
        self._sql(f"UPDATE __state SET __done = true WHERE {due}")
        span = max((f.length for f in frames if not f.rows), default=0)
        count = max((f.length for f in frames if f.rows), default=0)
        part = f"PARTITION BY __done{self.keys}{self.part}"
        self._sql(
            "CREATE OR REPLACE TABLE __state AS SELECT * FROM __state QUALIFY NOT (__done AND "
            f"__ms <= {upto} - {span} AND row_number() OVER ({part} ORDER BY __ms DESC, "
            f"{self._order(' DESC')}) > {count - 1})"
        )
        return out

    def _sessions(self, upto: str) -> pa.Table:
        """Sessions ending by ``upto`` (those ending by the restored watermark were emitted
        before the restart); the rows of the others stay."""
        keys = f"PARTITION BY {self.by} " if self.by else ""
        self._sql(
            f"CREATE OR REPLACE TEMP TABLE __sess AS SELECT *, max(__ms) OVER (PARTITION BY "
            f"__sid{self.keys}{self.part}) + {self.gap} AS __end FROM (SELECT *, sum(__brk) "
            f"OVER ({keys}ORDER BY __ms ROWS UNBOUNDED PRECEDING) AS __sid FROM (SELECT *, "
            f"coalesce(__ms - lag(__ms) OVER ({keys}ORDER BY __ms) >= {self.gap}, true)::INT "
            "AS __brk FROM __state))"
        )
        aggs = ", ".join(f"{a.over_rows()} AS {quote(n)}" for n, a in self.aggregates.items())
        out = self._table(
            f"SELECT epoch_ms(min(__ms)) AS window_start, epoch_ms(__end) AS window_end"
            f"{self.keys}, {aggs} FROM __sess WHERE __end <= {upto} AND __end > "
            f"{self._at('__restored', self.restored)} GROUP BY __sid, __end{self.keys}{self.part} "
            f"ORDER BY window_start{self.keys}"
        )
        self._sql(
            "CREATE OR REPLACE TABLE __state AS SELECT * EXCLUDE (__brk, __sid, __end) "
            f"FROM __sess WHERE __end > {upto}"
        )
        return out

    def _hold(self) -> str:
        """SQL: the lowest offset per partition still in the state."""
        low = "__low" if self.size else "_offset"
        return f"SELECT _topic, _partition, min({low}) FROM __state GROUP BY ALL"

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
        """Hold each partition at its lowest offset in the state; add the bookkeeping.

        ``positions`` may hand back this transform's keys as they were stored (the runner
        carries what it does not own): they are replaced, never passed on, since with
        ``partitioned`` those of partitions now held by another worker are stale and would
        overwrite what that worker stores (its next owner would then replay emitted rows).
        Several workers need a sink that merges checkpoints, which keeps keys not given."""
        own = {k: v for k, v in positions.items() if not k.startswith(KEY)}
        if not self.tracked or not self.made:
            return own if self.partitioned else positions
        positions = own
        low = {f"{t}/{p}": offset for t, p, offset in self._sql(self._hold())}
        seen = {f"{t}/{p}": offset for (t, p), offset in self.seen.items()}
        read = {k: max(v, seen.get(k, v)) for k, v in positions.items()}  # even if sought back
        out = {k: min(v, low.get(k, v)) for k, v in read.items()}
        done = self.done | {k: max(v, self.done.get(k, v)) for k, v in self.seen.items()}
        if self.partitioned:  # of the partitions this worker stores (their positions) only
            mine = {(t, p) for t, p in map(_partition, filter(is_partition, positions))}
            out |= {f"{KEY}{t}/{p}": v for (t, p), v in done.items() if (t, p) in mine}
            return out | {f"{MARK}{t}/{p}": v for (t, p), v in self.marks.items() if (t, p) in mine}
        out |= {f"{KEY}{t}/{p}": v for (t, p), v in done.items()}
        return out | {KEY + "watermark": self.watermark}

    def finish(self) -> pa.Table:
        """The source ended: emit everything open; later rows for it count as late."""
        if self.made:
            end = f"max(__start) + {self.size}" if self.size else f"max(__ms) + {self.gap or 1}"
            ((last,),) = self._sql(f"SELECT {end} FROM __state")
            self.watermark = max(self.watermark, NEVER if last is None else last)
            ends = f"SELECT _topic, _partition, {end} FROM __state GROUP BY ALL"
            for t, p, last in self._sql(ends) if self.partitioned else []:
                self.marks[(t, p)] = max(self.marks.get((t, p), self.restored), last)
        return self._emit(-NEVER)


def _partition(key: str) -> tuple[str, int]:
    """``<topic>/<partition>`` -> (topic, partition)."""
    topic, _, part = key.rpartition("/")
    return topic, int(part)


def _iso(ms: int) -> str:
    return "none" if ms <= NEVER else datetime.fromtimestamp(ms / 1000, UTC).isoformat()
