"""``query``: the result of one read-only SQL query over the pipeline's lake and database.

A finite source for batch flows on a schedule (an end-of-day summary, a rollup): each run
of the flow reads the query's result *now*, through the same query layer and SQL guard as
``tidelake query`` and the REST API (one ``SELECT``, no files, no writes), then ends.

Delivery: a run interrupted before its sink committed simply runs the query again, so land
it with ``mode: upsert`` on the result's key: a repeated run converges to the same rows.
The position ``{"query_runs": n}`` counts runs that landed (for observability, not replay).
A run before a lake table it reads was first landed by its flow (a schedule that starts with
the pipeline) reads nothing instead of failing.
"""

from __future__ import annotations

import logging
from typing import Literal

import pyarrow as pa
from pydantic import Field, field_validator

from tidelake.errors import QueryError
from tidelake.lake import QueryEngine
from tidelake.lake.query import check_select, referenced_tables
from tidelake.runtime.base import Batch, Checkpoint, ConnectorConfig, FlowContext, Source

log = logging.getLogger(__name__)


class QuerySource(Source):
    """One batch: the rows of ``sql`` over ``lake.<table>`` and ``db.<table>``."""

    class Config(ConnectorConfig):
        type: Literal["query"]
        sql: str = Field(description="one SELECT over lake.<table> / db.<table> (DuckDB SQL)")

        @field_validator("sql")
        @classmethod
        def _one_select(cls, v: str) -> str:
            try:
                check_select(v)
            except QueryError as e:
                raise ValueError(str(e)) from None
            return v

    config: Config

    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        self.ctx = ctx
        self.runs = int(checkpoint.get("query_runs", 0))
        self.done = False

    def read(self, max_records: int, timeout: float) -> Batch | None:
        if self.done:
            return None
        with QueryEngine(self.ctx.pipeline) as engine:
            waiting = self._not_landed(set(engine.lake_names()))
            rows = pa.table({}) if waiting else engine.sql(self.config.sql)
        if waiting:
            log.info(
                "flow %s: nothing to read yet: %s not landed by %s", self.ctx.flow,
                ", ".join(f"lake.{t}" for t in waiting), "its flow" if len(waiting) == 1
                else "their flows",
            )  # fmt: skip
        self.done = True
        return Batch(rows, {"query_runs": self.runs + 1})

    def _not_landed(self, existing: set[str]) -> list[str]:
        """Lake tables the query reads that a flow of this pipeline lands but that do not
        exist yet (a schedule that runs before them reads nothing; other missing tables are
        the query's error)."""
        landed = {f.sink.table for f in self.ctx.pipeline.flows.values() if f.sink.type == "lake"}  # type: ignore[attr-defined]
        named = {t.removeprefix("lake.") for t in referenced_tables(self.config.sql)}
        return sorted(t for t in named if t in landed and t not in existing)
