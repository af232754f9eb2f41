from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from tidelake.config import Pipeline
from tidelake.errors import ConfigError
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.transforms.validate import Validate


def validator(rules: list[dict[str, object]]) -> tuple[Validate, list[tuple[pa.Table, str]]]:
    dead: list[tuple[pa.Table, str]] = []
    pipeline = Pipeline(name="t", flows={}, base_dir=Path("."))
    ctx = FlowContext(
        "f",
        pipeline,
        FlowMetrics("f"),
        broker_factory=lambda: None,  # type: ignore[arg-type,return-value]
        dead_letter=lambda rows, reason: dead.append((rows, reason)),
    )
    v = Validate(Validate.Config.model_validate({"type": "validate", "rules": rules}))
    v.open(ctx)
    return v, dead


RATINGS = pa.table(
    {
        "id": [1, 2, 3, 4, 5, 6, 7, 8],
        "user": ["a", None, "c", "d", "e", "f", "g", "h"],
        "rating": [4.5, 3.0, 7.0, 2.0, 1.0, 0.0, None, 2.5],
        "source": ["web", "web", "web", "fax", "app", "app", "web", "web"],
        "email": ["a@x.io", "b@x.io", "c@x.io", "d@x.io", "bad", "f@x.io", "g@x.io", "h@x.io"],
        "qty": ["1", "2", "3", "4", "5", "6", "1.5", "8"],
    }
)


def test_rows_failing_rules_go_to_dead_letter_grouped_by_first_failed_rule() -> None:
    v, dead = validator(
        [
            {"column": "user", "required": True},
            {"column": "rating", "min": 0.5, "max": 5},
            {"column": "source", "in": ["web", "app"]},
            {"column": "email", "regex": "^[^@]+@[^@]+$", "name": "email shape"},
            {"expression": "rating IS NULL OR rating < 5"},
            {"column": "qty", "type": "int"},
        ]
    )
    out = v(RATINGS)
    assert out.column("id").to_pylist() == [1, 8]
    reasons = {reason: rows.column("id").to_pylist() for rows, reason in dead}
    assert reasons == {
        "validate rule 1 on 'user': value is required": [2],
        "validate rule 2 on 'rating': above max 5": [3],
        "validate rule 2 on 'rating': below min 0.5": [6],
        "validate rule 3 on 'source': not one of ['web', 'app']": [4],
        "validate rule 4 'email shape' on 'email': does not match '^[^@]+@[^@]+$'": [5],
        "validate rule 6 on 'qty': not a valid int": [7],
    }
    assert sum(r.num_rows for r, _ in dead) + out.num_rows == RATINGS.num_rows


def test_expression_null_counts_as_failing_and_types_are_checked() -> None:
    v, dead = validator(
        [
            {"expression": "rating >= 1"},
            {"column": "when", "type": "timestamp"},
        ]
    )
    t = pa.table(
        {
            "rating": [1.0, None, 0.5, 2.0],
            "when": ["2024-01-01T00:00:00Z", "x", "2024-01-01", "yesterday"],
        }
    )
    out = v(t)
    assert out.num_rows == 1
    assert [(r.num_rows, reason.split(": ")[1]) for r, reason in dead] == [
        (2, "fails 'rating >= 1'"),
        (1, "not a valid timestamp"),
    ]


def test_missing_column_fails_required_rule_and_skips_others() -> None:
    v, dead = validator([{"column": "ghost", "min": 1}, {"column": "ghost2", "not_null": True}])
    out = v(pa.table({"a": [1, 2]}))
    assert out.num_rows == 0 and dead[0][1].endswith("column is missing")


def test_timestamp_bounds_and_valid_batches_pass_untouched() -> None:
    v, dead = validator([{"column": "ts", "min": "2020-01-01"}])
    t = pa.table({"ts": [datetime(2021, 1, 1, tzinfo=UTC), datetime(2019, 1, 1, tzinfo=UTC)]})
    assert v(t).num_rows == 1 and len(dead) == 1
    ok = pa.table({"ts": [datetime(2021, 1, 1, tzinfo=UTC)]})
    assert v(ok) is ok


def test_bad_rules_fail_at_construction() -> None:
    with pytest.raises(ValidationError):
        Validate.Config.model_validate({"type": "validate", "rules": [{"min": 1}]})
    with pytest.raises(ValidationError):
        Validate.Config.model_validate({"type": "validate", "rules": [{"column": "a"}]})
    with pytest.raises(ConfigError, match="invalid regex"):
        validator([{"column": "a", "regex": "("}])
    with pytest.raises(ConfigError, match="invalid SQL"):
        validator([{"expression": "a >"}])


def test_zero_bounds_count_as_checks() -> None:
    from tidelake.transforms.validate import Validate

    cfg = Validate.Config.model_validate({"type": "validate", "rules": [{"column": "n", "min": 0}]})
    assert cfg.rules[0].min == 0
