"""``query``: the result of one read-only SQL query over the pipeline's lake and database.

A finite source for batch flows on a schedule (an end-of-day summary, a rollup): each run
of the flow reads the query's result *now*, through the same query layer and SQL guard as
``tidelake query`` and the REST API (one ``SELECT``, no files, no writes), then ends.

Delivery: a run interrupted before its sink committed simply runs the query again, so land
it with ``mode: upsert`` on the result's key: a repeated run converges to the same rows.
The position ``{"query_runs": n}`` counts runs that landed (for observability, not replay).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tidelake.errors import QueryError
from tidelake.lake import QueryEngine
from tidelake.lake.query import check_select
from tidelake.runtime.base import Batch, Checkpoint, ConnectorConfig, FlowContext, Source


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
            rows = engine.sql(self.config.sql)
        self.done = True
        return Batch(rows, {"query_runs": self.runs + 1})
