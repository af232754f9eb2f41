"""Column templates render one name per row, NULL where a value is NULL."""

from __future__ import annotations

import pyarrow as pa

from tidelake import column_templates


def test_fields_and_rendering_per_row() -> None:
    table = pa.table({"db": ["shop", "shop", None], "_table": ["orders", "users", "x"]})
    assert column_templates.fields("cdc.{db}.{_table}") == ["db", "_table"]
    rendered = column_templates.render("cdc.{db}.{_table}", table)
    assert rendered.to_pylist() == ["cdc.shop.orders", "cdc.shop.users", None]
