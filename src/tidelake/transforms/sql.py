"""``sql``: a DuckDB query over each batch, and the locked-down engine other transforms share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import duckdb
import orjson
import pyarrow as pa
from pydantic import Field

from tidelake.errors import ConfigError
from tidelake.formats.json import project_schema
from tidelake.runtime.base import ConnectorConfig, Transform

BATCH = "batch"
"""The name a query uses for the batch being transformed."""


class BatchSQL:
    """An in-memory DuckDB connection that only ever sees the batch it is given.

    External access (files, network, extension downloads) is disabled and the
    configuration is locked, so a query in a pipeline file cannot read or write
    anything outside the batch. Insertion order is preserved, so a projection's
    rows line up with the batch's (transforms rely on it to compute a column or
    a mask in DuckDB and splice it into the Arrow batch, keeping exact types).
    One per transform: DuckDB connections are not shared between flows.
    """

    def __init__(self) -> None:
        self.con = duckdb.connect(
            config={
                "enable_external_access": False,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "preserve_insertion_order": True,
                "lock_configuration": True,
            }
        )

    def check(self, sql: str, what: str) -> None:
        """Fail fast on a syntax error or on anything but one read-only query."""
        try:
            statements = self.con.extract_statements(sql)
        except duckdb.Error as e:
            raise ConfigError(f"{what}: invalid SQL: {e}") from e
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise ConfigError(f"{what}: give exactly one SELECT query over {BATCH!r}")

    def query(
        self, table: pa.Table, sql: str, what: str, params: Sequence[Any] | None = None
    ) -> pa.Table:
        """Run ``sql`` with ``table`` registered as ``batch``; errors name the batch's columns."""
        self.con.register(BATCH, table)
        try:
            return self.con.sql(sql, params=params).to_arrow_table()
        except duckdb.Error as e:
            cols = ", ".join(table.column_names)
            raise ConfigError(f"{what}: query failed: {e} (batch columns: {cols})") from e
        finally:
            self.con.unregister(BATCH)

    def reads(self, sql: str, schema: pa.Schema) -> list[str] | None:
        """The columns (dotted paths into structs) ``sql`` reads of a batch of ``schema``,
        from DuckDB's plan; None when that cannot be told or the query would give another
        result schema over a batch of those columns only."""
        try:
            self.con.register(BATCH, schema.empty_table())
            plan = orjson.loads(self.con.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchall()[0][1])
            want = self.con.sql(sql).to_arrow_table().schema
            paths = sorted(set(_scanned(plan)))
            cut = project_schema(schema, paths) if paths else None
            if cut is None:
                return None
            self.con.register(BATCH, cut.empty_table())
            return paths if self.con.sql(sql).to_arrow_table().schema == want else None
        except duckdb.Error:
            return None
        finally:
            self.con.unregister(BATCH)

    def close(self) -> None:
        self.con.close()


def _scanned(plan: Any) -> list[str]:
    """The columns the Arrow scans in a JSON query plan read."""
    if isinstance(plan, list):
        return [c for node in plan for c in _scanned(node)]
    info = plan.get("extra_info", {})
    cols = info.get("Projections", []) if "ARROW_SCAN" in plan.get("name", "") else []
    return [*([cols] if isinstance(cols, str) else cols), *_scanned(plan.get("children", []))]


class SqlTransform(Transform):
    """Replace each batch by the result of a DuckDB query over it.

    The query sees only the current batch (as ``batch``): aggregates are per
    batch, not over the stream (use ``window`` for that). Output columns and
    their order are whatever the query selects.
    """

    class Config(ConnectorConfig):
        type: Literal["sql"]
        query: str = Field(
            description="one SELECT over the batch, named `batch` "
            "(e.g. SELECT *, rating * 2 AS r FROM batch WHERE rating > 1)"
        )

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.engine = BatchSQL()
        self.engine.check(config.query, "sql transform")

    def __call__(self, table: pa.Table) -> pa.Table:
        return self.engine.query(table, self.config.query, "sql transform")

    def reads(self, schema: pa.Schema) -> list[str] | None:
        return self.engine.reads(self.config.query, schema)
