"""``validate``: rows breaking a rule go to the dead-letter topic with the rule named.

Bad input is data, not a crash (docs/architecture.md, principle 3): a row failing any rule
leaves the flow, is sent to ``<pipeline>.<flow>.dlq`` with a reason naming the first
rule and column it failed, and valid rows continue in their original order.
One DuckDB query per batch finds the first failing check of every row.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tidelake.errors import ConfigError
from tidelake.identifiers import quote
from tidelake.runtime.base import ConnectorConfig, FlowContext, Transform
from tidelake.transforms.sql import BATCH, BatchSQL

_CASTS = {"int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN", "timestamp": "TIMESTAMPTZ"}
Scalar = bool | int | float | str


class Rule(BaseModel):
    """Checks on one column (or one SQL predicate); checks run in the order listed here."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    column: str | None = Field(None, description="the column checked (optional for expression)")
    required: bool = Field(False, description="the column must exist and be non-NULL")
    not_null: bool = Field(False, description="same as required")
    type: Literal["int", "float", "string", "bool", "timestamp"] | None = Field(
        None, description="non-NULL values must be castable to this type (int: no fraction)"
    )
    min: int | float | str | None = Field(None, description="non-NULL values must be >= min")
    max: int | float | str | None = Field(None, description="non-NULL values must be <= max")
    in_: list[Scalar] | None = Field(None, alias="in", description="allowed values")
    regex: str | None = Field(
        None, description="non-NULL values must contain a match (RE2; anchor with ^...$)"
    )
    expression: str | None = Field(
        None, description="DuckDB SQL predicate each row must satisfy (NULL counts as failing)"
    )
    name: str | None = Field(None, description="label used in dead-letter reasons")

    @model_validator(mode="after")
    def _meaningful(self) -> Rule:
        column_checks = (
            self.required,
            self.not_null,
            self.type,
            self.min,
            self.max,
            self.in_,
            self.regex,
        )
        if self.column is None and any(c is not None and c is not False for c in column_checks):
            raise ValueError("give the 'column' these checks apply to")
        if all(c is None or c is False for c in column_checks) and self.expression is None:
            raise ValueError(
                "a rule needs at least one check (required, type, min, max, in, "
                "regex or expression)"
            )
        return self


class _Check:
    """One atomic check: a SQL condition that is TRUE exactly when a row fails it."""

    def __init__(self, fails: str, reason: str, params: list[Any]) -> None:
        self.fails, self.reason, self.params = fails, reason, params


class Validate(Transform):
    """Route rows failing any rule to the dead-letter topic; pass the rest through.

    NULLs pass every check except ``required``/``not_null`` and ``expression``.
    A rule on an absent column fails every row if it is required and is
    skipped otherwise (the column is all NULL).
    """

    class Config(ConnectorConfig):
        type: Literal["validate"]
        rules: list[Rule] = Field(min_length=1, description="checks every row must pass")

    config: Config
    ctx: FlowContext | None = None

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.engine = BatchSQL()
        self._plans: dict[pa.Schema, tuple[str, list[Any], list[str]]] = {}
        for i, rule in enumerate(config.rules):
            if rule.expression is not None:
                self.engine.check(f"SELECT ({rule.expression}) FROM {BATCH}", self._label(i))
            if rule.regex is not None:
                try:
                    self.engine.con.sql(
                        "SELECT regexp_matches('', $1)", params=[rule.regex]
                    ).fetchall()
                except Exception as e:
                    raise ConfigError(f"{self._label(i)}: invalid regex {rule.regex!r}: {e}") from e

    def open(self, ctx: FlowContext) -> None:
        self.ctx = ctx

    def _label(self, i: int) -> str:
        rule = self.config.rules[i]
        where = f" on {rule.column!r}" if rule.column else ""
        return f"validate rule {i + 1}{f' {rule.name!r}' if rule.name else ''}{where}"

    def _checks(self, i: int, schema: pa.Schema) -> list[_Check]:
        rule, label = self.config.rules[i], self._label(i)
        checks: list[_Check] = []
        if rule.column is not None and rule.column not in schema.names:
            if rule.required or rule.not_null:
                checks.append(_Check("TRUE", f"{label}: column is missing", []))
            return checks
        if rule.column is not None:
            c = quote(rule.column)
            ftype = schema.field(rule.column).type
            if rule.required or rule.not_null:
                checks.append(_Check(f"{c} IS NULL", f"{label}: value is required", []))
            if rule.type is not None and rule.type != "string":
                if rule.type == "int":
                    ok = (
                        f"TRY_CAST({c} AS BIGINT) IS NOT NULL AND "
                        f"TRY_CAST({c} AS DOUBLE) = TRY_CAST({c} AS BIGINT)"
                    )
                    if pa.types.is_integer(ftype):
                        ok = "TRUE"
                else:
                    ok = f"TRY_CAST({c} AS {_CASTS[rule.type]}) IS NOT NULL"
                checks.append(
                    _Check(
                        f"{c} IS NOT NULL AND NOT ({ok})", f"{label}: not a valid {rule.type}", []
                    )
                )
            for bound, op, word in ((rule.min, "<", "below min"), (rule.max, ">", "above max")):
                if bound is None:
                    continue
                if isinstance(bound, int | float) and not isinstance(bound, bool):
                    cond = f"COALESCE(TRY_CAST({c} AS DOUBLE) {op} ?, TRUE)"
                else:
                    cond = f"{c} {op} ?"
                checks.append(
                    _Check(f"{c} IS NOT NULL AND {cond}", f"{label}: {word} {bound}", [bound])
                )
            if rule.in_ is not None:
                values = rule.in_
                if all(isinstance(v, bool) for v in values):
                    cast = "BOOLEAN"
                elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                    cast = "DOUBLE"
                else:
                    cast, values = "VARCHAR", [str(v) for v in values]
                checks.append(
                    _Check(
                        f"{c} IS NOT NULL AND NOT COALESCE(list_contains(?::{cast}[], "
                        f"TRY_CAST({c} AS {cast})), FALSE)",
                        f"{label}: not one of {rule.in_}",
                        [values],
                    )
                )
            if rule.regex is not None:
                checks.append(
                    _Check(
                        f"{c} IS NOT NULL AND NOT regexp_matches({c}::VARCHAR, ?)",
                        f"{label}: does not match {rule.regex!r}",
                        [rule.regex],
                    )
                )
        if rule.expression is not None:
            checks.append(
                _Check(
                    f"NOT COALESCE(({rule.expression}), FALSE)",
                    f"{label}: fails {rule.expression!r}",
                    [],
                )
            )
        return checks

    def _plan(self, schema: pa.Schema) -> tuple[str, list[Any], list[str]]:
        plan = self._plans.get(schema)
        if plan is None:
            checks = [c for i in range(len(self.config.rules)) for c in self._checks(i, schema)]
            if not checks:
                plan = ("", [], [])
            else:
                whens = " ".join(f"WHEN {c.fails} THEN {k}" for k, c in enumerate(checks))
                sql = f"SELECT CASE {whens} END AS failed FROM {BATCH}"
                plan = (sql, [p for c in checks for p in c.params], [c.reason for c in checks])
            self._plans[schema] = plan
        return plan

    def reasons(self, table: pa.Table) -> pa.Array:
        """Per row, the reason of the first check it fails, or null when it passes them all."""
        sql, params, reasons = self._plan(table.schema)
        if not sql:
            return pa.nulls(table.num_rows, pa.string())
        failed = self.engine.query(table, sql, "validate", params=params).column(0)
        return pc.take(pa.array(reasons, pa.string()), failed)

    def __call__(self, table: pa.Table) -> pa.Table:
        reasons = self.reasons(table)
        if reasons.null_count == len(reasons):
            return table
        for reason in sorted(v for v in pc.unique(reasons).to_pylist() if v is not None):
            rows = table.filter(pc.equal(reasons, reason))
            if self.ctx is None:
                raise ConfigError(f"{reason} ({rows.num_rows} rows; call open() first)")
            self.ctx.dead_letter(rows, reason)
        return table.filter(pc.is_null(reasons))
