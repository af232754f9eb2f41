"""Column-level transforms: ``rename``, ``derive``, ``filter``, ``drop``, ``flatten``.

All are vectorized: pyarrow for column surgery, DuckDB (locked down, batch only)
for SQL expressions.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from tidelake.errors import ConfigError
from tidelake.identifiers import quote
from tidelake.runtime.base import ConnectorConfig, FlowContext, Transform
from tidelake.transforms.sql import BATCH, BatchSQL


def _missing(table: pa.Table, wanted: list[str], what: str) -> None:
    absent = [c for c in wanted if c not in table.column_names]
    if absent:
        raise ConfigError(
            f"{what}: column(s) {', '.join(absent)} not in the batch "
            f"(batch columns: {', '.join(table.column_names)}; "
            "set strict: false to skip absent ones)"
        )


class Rename(Transform):
    """Rename columns; data and column order are unchanged."""

    class Config(ConnectorConfig):
        type: Literal["rename"]
        columns: dict[str, str] = Field(description="old name -> new name")
        strict: bool = Field(True, description="an absent old name is an error (false: skip it)")

    config: Config

    def __call__(self, table: pa.Table) -> pa.Table:
        mapping = self.config.columns
        if self.config.strict:
            _missing(table, list(mapping), "rename")
        return table.rename_columns([mapping.get(c, c) for c in table.column_names])


class Derive(Transform):
    """Add (or replace) columns computed by SQL expressions over the batch.

    Every expression sees the input columns, not columns derived in the same
    step: chain two ``derive`` steps when one derived column needs another.
    A name that already exists is replaced in place; new columns are appended;
    other columns keep their exact Arrow data and types.
    """

    class Config(ConnectorConfig):
        type: Literal["derive"]
        columns: dict[str, str] = Field(
            description="new column -> DuckDB SQL expression, "
            "e.g. full_name: \"last || ' ' || first\""
        )

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.engine = BatchSQL()
        for name, expr in config.columns.items():
            self.engine.check(f"SELECT {expr} FROM {BATCH}", f"derive {name}")

    def __call__(self, table: pa.Table) -> pa.Table:
        exprs = ", ".join(f"({e}) AS {quote(n)}" for n, e in self.config.columns.items())
        derived = self.engine.query(table, f"SELECT {exprs} FROM {BATCH}", "derive")
        for name, column in zip(derived.column_names, derived.columns, strict=True):
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, column)
            else:
                table = table.append_column(name, column)
        return table


class Filter(Transform):
    """Keep the rows where a SQL predicate is true (false *and* NULL rows are left out).

    Kept rows are the batch's own Arrow data, in order: column types never change.
    """

    class Config(ConnectorConfig):
        type: Literal["filter"]
        where: str = Field(
            description="DuckDB SQL predicate over the batch's columns, e.g. age > 13"
        )

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.engine = BatchSQL()
        self.sql = f"SELECT COALESCE(({config.where}), FALSE) FROM {BATCH}"
        self.engine.check(self.sql, "filter")

    def __call__(self, table: pa.Table) -> pa.Table:
        return table.filter(self.engine.query(table, self.sql, "filter").column(0))


class Drop(Transform):
    """Remove columns."""

    class Config(ConnectorConfig):
        type: Literal["drop"]
        columns: list[str] = Field(description="columns to remove")
        strict: bool = Field(False, description="an absent column is an error (default: skip it)")

    config: Config

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.config.strict:
            _missing(table, self.config.columns, "drop")
        return table.drop_columns([c for c in self.config.columns if c in table.column_names])


class Flatten(Transform):
    """Turn nested struct columns into top-level columns, recursively.

    ``user: {name: {first}}`` becomes ``user_name_first``. Lists are kept as
    lists. A parent's NULL makes its children NULL. Columns listed in
    ``parse_json`` hold JSON text: they are parsed (the batch's objects decide
    the struct type) and then flattened; rows whose text is not valid JSON go
    to the dead-letter topic with the column named.
    """

    class Config(ConnectorConfig):
        type: Literal["flatten"]
        columns: list[str] | None = Field(
            None, description="struct columns to flatten (default: every struct column)"
        )
        separator: str = Field("_", description="joins parent and child names")
        parse_json: list[str] = Field(
            [], description="string columns holding JSON objects: parse, then flatten"
        )

        @field_validator("separator")
        @classmethod
        def _sep(cls, v: str) -> str:
            if not v:
                raise ValueError("use a non-empty separator, e.g. '_' or '.'")
            return v

    config: Config
    ctx: FlowContext | None = None

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.engine = BatchSQL() if config.parse_json else None

    def open(self, ctx: FlowContext) -> None:
        self.ctx = ctx

    def __call__(self, table: pa.Table) -> pa.Table:
        for col in self.config.parse_json:
            if col in table.column_names:
                table = self._parse_json(table, col)
        wanted = self.config.columns
        if wanted is None:
            wanted = [f.name for f in table.schema if pa.types.is_struct(f.type)]
        else:
            wanted = [*wanted, *(c for c in self.config.parse_json if c not in wanted)]
        names: list[str] = []
        arrays: list[pa.ChunkedArray] = []
        for name, column in zip(table.column_names, table.columns, strict=True):
            if name in wanted:
                self._flatten(name, column, names, arrays)
            else:
                names.append(name)
                arrays.append(column)
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(
                f"flatten: names {', '.join(dup)} would appear twice "
                f"(choose another separator than {self.config.separator!r} or rename first)"
            )
        return pa.Table.from_arrays(arrays, names=names)

    def _flatten(
        self, name: str, column: pa.ChunkedArray, names: list[str], arrays: list[pa.ChunkedArray]
    ) -> None:
        if not pa.types.is_struct(column.type):
            names.append(name)
            arrays.append(column)
            return
        for field, child in zip(column.type, column.flatten(), strict=True):
            self._flatten(f"{name}{self.config.separator}{field.name}", child, names, arrays)

    def _parse_json(self, table: pa.Table, col: str) -> pa.Table:
        assert self.engine is not None
        if not pa.types.is_string(table.schema.field(col).type) and not pa.types.is_large_string(
            table.schema.field(col).type
        ):
            return table
        what = f"flatten parse_json {col}"
        c = quote(col)
        valid = self.engine.query(
            table, f"SELECT {c} IS NULL OR json_valid({c}) AS ok FROM {BATCH}", what
        ).column(0)
        if not pc.all(valid).as_py():
            bad = table.filter(pc.invert(valid))
            if self.ctx is None:
                raise ConfigError(f"{what}: {bad.num_rows} row(s) are not valid JSON")
            self.ctx.dead_letter(bad, f"flatten: column {col!r} is not valid JSON")
            table = table.filter(valid)
        rows = self.engine.query(
            table, f"SELECT json_group_structure({c}::JSON) FROM {BATCH}", what
        ).column(0)
        structure = rows[0].as_py() if len(rows) else None
        if structure is None:
            return table
        structure = structure.replace('"UBIGINT"', '"BIGINT"')
        parsed = self.engine.query(
            table, f"SELECT from_json({c}, $1) FROM {BATCH}", what, params=[structure]
        ).column(0)
        return table.set_column(table.column_names.index(col), col, parsed)
