"""Request and response bodies of the API: the single source of its validation and docs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Scalar = str | int | float | bool | None
Op = Literal["=", "!=", "<", "<=", ">", ">=", "in", "like", "is_null", "not_null"]
MAX_IN_VALUES = 1_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(_Model):
    """Every error body: a short message saying what to change."""

    detail: str


class ColumnInfo(_Model):
    name: str
    type: str
    nullable: bool = True


class SnapshotSummary(_Model):
    snapshot_id: int
    committed_at: datetime
    operation: str
    added_rows: int
    total_rows: int
    flow: str | None = None


class TableSummary(_Model):
    name: str
    kind: Literal["lake", "db"]
    columns: list[ColumnInfo]
    rows: int | None = None
    files: int | None = None
    partitions: int | None = None
    snapshots: int | None = None
    partition_spec: str = ""
    last_updated: datetime | None = None
    freshness_seconds: float | None = Field(None, description="seconds since the last commit")


class TableDetailOut(TableSummary):
    properties: dict[str, str] = {}
    history: list[SnapshotSummary] = Field([], description="most recent snapshots first")
    checkpoints: dict[str, dict[str, int]] = Field(
        {}, description="flow -> source position stored with the data"
    )


class Filter(_Model):
    """One structured condition; ``value`` is always bound as a parameter, never pasted."""

    column: str = Field(min_length=1, max_length=256)
    op: Op = "="
    value: Scalar | list[Scalar] = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Filter:
        if self.op in ("is_null", "not_null"):
            if self.value is not None:
                raise ValueError(f"op {self.op!r} takes no value")
        elif self.op == "in":
            if not isinstance(self.value, list) or not self.value:
                raise ValueError("op 'in' needs a non-empty list value")
            if len(self.value) > MAX_IN_VALUES:
                raise ValueError(f"op 'in' takes at most {MAX_IN_VALUES} values")
        elif isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a single value, not a list")
        elif self.value is None:
            raise ValueError(f"op {self.op!r} needs a value (use is_null to match NULL)")
        elif self.op == "like" and not isinstance(self.value, str):
            raise ValueError("op 'like' needs a string pattern")
        return self


class QueryRequest(_Model):
    sql: str = Field(min_length=1, max_length=100_000, description="one read-only SELECT")
    limit: int | None = Field(None, ge=1, description="rows to return at most (capped)")
    as_of: int | str | None = Field(
        None, description="snapshot id or ISO-8601 time: time-travel every lake table"
    )


class QueryResult(_Model):
    columns: list[ColumnInfo]
    rows: list[list[Any]]
    row_count: int
    truncated: bool = Field(description="more rows exist than were returned")
    elapsed_ms: float


class SavedQuery(_Model):
    name: str
    sql: str


class IngestResult(_Model):
    topic: str
    accepted: int


class FlowStatus(_Model):
    flow: str
    state: str
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    batches: int = 0
    errors: int = 0
    dead_letters: int = 0
    lag: int = 0
    rate_out: float = Field(0.0, description="records/s out since the flow started")
    last_batch_seconds: float = 0.0
    last_checkpoint_age_seconds: float | None = None
    last_error: str = ""
    updated_age_seconds: float | None = Field(None, description="age of these counters")
    stale: bool = Field(False, description="the flow stopped publishing counters")
    worker: str = Field("", description="which worker of the flow (empty: one process)")
    partitions: dict[str, int] = Field(
        {}, description="partitions this worker owns (<topic>/<partition>) -> lag"
    )
    schedule: str | None = Field(None, description="the schedule that runs it")
    cron: str | None = Field(None, description="a scheduled flow's cron expression")
    last_run: float | None = Field(None, description="a scheduled flow's last start (epoch s)")
    next_run: float | None = Field(None, description="a scheduled flow's next start (epoch s)")


__all__ = [
    "ColumnInfo",
    "Filter",
    "FlowStatus",
    "IngestResult",
    "Problem",
    "QueryRequest",
    "QueryResult",
    "SavedQuery",
    "SnapshotSummary",
    "TableDetailOut",
    "TableSummary",
]
