"""DuckDB-dialect transform SQL -> Spark SQL, with sqlglot; what does not translate is an error.

sqlglot rewrites what it knows (``split_part``, ``//``, ``::VARCHAR``, ``list_transform``, ...)
and passes what it does not know through unchanged, which Spark would then reject at run
time or, worse, run with another meaning. So a translation is refused up front when the
result still holds a function Spark does not have (checked against ``pyspark.sql.functions``,
no JVM needed) or a construct Spark SQL lacks (``ASOF JOIN``, ``COLUMNS(...)``).
"""

from __future__ import annotations

import functools

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError

from tidelake import extras
from tidelake.errors import ConfigError
from tidelake.transforms.sql import BATCH


class Untranslatable(ConfigError):
    """Transform SQL that has no Spark SQL equivalent; the message names the construct."""


@functools.cache
def _spark_functions() -> frozenset[str]:
    functions = extras.load("pyspark.sql.functions", "engine: spark")
    return frozenset(name.lower() for name in dir(functions) if not name.startswith("_"))


def _refused(tree: exp.Expr) -> str | None:
    """The first construct of ``tree`` (Spark dialect) Spark SQL cannot run, as SQL text."""
    for node in tree.walk():
        if isinstance(node, exp.Columns):
            return f"{node.sql('duckdb')} (DuckDB's COLUMNS expression)"
        if isinstance(node, exp.Join) and node.text("method").upper() == "ASOF":
            return "ASOF JOIN"
        if isinstance(node, exp.Anonymous) and node.name.lower() not in _spark_functions():
            return f"{node.name.lower()}() (no Spark SQL function of that name)"
    return None


def to_spark(query: str, view: str = BATCH) -> str:
    """``query`` in Spark SQL, reading ``view`` where it read ``batch``.

    Raises :class:`Untranslatable` naming the first construct that does not translate."""
    try:
        tree = sqlglot.parse_one(query, read="duckdb")
        spark_sql = tree.sql("spark", unsupported_level=ErrorLevel.RAISE)
        spark_tree = sqlglot.parse_one(spark_sql, read="spark")
    except SqlglotError as e:
        raise Untranslatable(f"does not translate to Spark SQL: {str(e).splitlines()[0]}") from e
    construct = _refused(spark_tree)
    if construct is not None:
        raise Untranslatable(
            f"does not translate to Spark SQL: {construct} "
            "(rewrite it with functions both engines have, or keep engine: tidelake)"
        )
    for table in spark_tree.find_all(exp.Table):
        if table.name == BATCH and not table.db:
            table.set("this", exp.to_identifier(view))
    return spark_tree.sql("spark")


def expression_to_spark(expression: str) -> str:
    """A DuckDB boolean or scalar expression (``filter``'s ``where``, ``derive``) in Spark SQL."""
    select = to_spark(f"SELECT {expression} FROM {BATCH}")
    return select[len("SELECT ") : select.rindex(f" FROM {BATCH}")]
