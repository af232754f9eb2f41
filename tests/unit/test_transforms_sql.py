from __future__ import annotations

import pyarrow as pa
import pytest

from tidelake.errors import ConfigError
from tidelake.transforms.sql import SqlTransform


def sql(query: str) -> SqlTransform:
    return SqlTransform(SqlTransform.Config(type="sql", query=query))


def test_query_over_the_batch_returns_arrow() -> None:
    t = pa.table({"user_id": [1, 2, 3], "rating": [4.5, 1.0, 3.0]})
    out = sql("SELECT user_id, rating * 2 AS r FROM batch WHERE rating > 2 ORDER BY user_id")(t)
    assert isinstance(out, pa.Table)
    assert out.to_pylist() == [{"user_id": 1, "r": 9.0}, {"user_id": 3, "r": 6.0}]


def test_same_transform_handles_successive_batches_with_other_schemas() -> None:
    s = sql("SELECT count(*) AS n FROM batch")
    assert s(pa.table({"a": [1, 2]})).to_pylist() == [{"n": 2}]
    assert s(pa.table({"b": ["x"]})).to_pylist() == [{"n": 1}]


def test_cannot_read_files_or_escape_the_batch(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="query failed"):
        sql("SELECT * FROM read_csv('/etc/passwd')")(pa.table({"a": [1]}))
    with pytest.raises(ConfigError, match="exactly one SELECT"):
        sql("COPY (SELECT 1) TO '/tmp/x/out.csv'")
    with pytest.raises(ConfigError, match="exactly one SELECT"):
        sql("SELECT 1; SELECT 2")
    with pytest.raises(ConfigError, match="invalid SQL"):
        sql("SELEC * FROM batch")


def test_runtime_error_lists_batch_columns() -> None:
    with pytest.raises(ConfigError, match="batch columns: a, b"):
        sql("SELECT nope FROM batch")(pa.table({"a": [1], "b": [2]}))
