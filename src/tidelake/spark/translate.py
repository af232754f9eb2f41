"""A flow's transforms as Spark DataFrame operations: the same meaning, Spark's execution.

Each translatable transform type maps to one function ``(DataFrame, config) -> DataFrame``
built from Spark built-ins (no Python UDFs on the hot path):

- ``sql``, ``filter``, ``derive``: the DuckDB SQL transpiled by ``tidelake.spark.sql``;
- ``rename``, ``drop``: column operations, strict the same way as the embedded ones;
- ``pseudonymize``: the same RFC 2104 HMAC-SHA256 as ``transforms.pseudonymize``, from Spark's
  ``sha2`` over the same padded keys, so both engines give byte-for-byte equal pseudonyms;
- ``flatten``: struct columns to top-level ones (``user_name_first``), recursively (JSON text
  columns, ``parse_json``, do not translate: their type is decided batch by batch);
- ``python``: the same batch function on each Arrow batch (``mapInArrow``, in Spark's Python
  workers); its result's columns and types are what it returns for an empty batch, since
  Spark needs them before the first batch;
- ``unwrap``: the row image (``after``, ``before`` for deletes) as columns with ``_op``,
  ``_ts``, ``_lsn``, ``_table``, as ``transforms.unwrap`` gives them (Debezium envelopes a
  topic source decodes into structs, also ``{"schema", "payload"}`` records);
- ``window``: Spark event-time windows; the watermark is ``allowed_lateness``, and a window
  is emitted once the watermark passes its end (append mode), as the embedded one does;
- ``validate``: the embedded rules themselves (``transforms.validate``, DuckDB in Spark's
  Python workers through ``mapInArrow``) give each row its reason, in a ``REASON`` column:
  the stream runs up to the first ``validate``, and each micro-batch sends the rows with a
  reason to the dead-letter topic and runs the transforms after it on the rest (``split``),
  so the reasons are the embedded engine's, word for word.

``untranslatable`` lists what a flow holds that does not translate, for ``tidelake
validate``, so a flow never fails on it after it started.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidelake.errors import ConfigError
from tidelake.runtime.base import PROVENANCE
from tidelake.spark.sql import Untranslatable, expression_to_spark, to_spark
from tidelake.transforms.pseudonymize import MIN_KEY_BYTES, hmac_pads
from tidelake.transforms.validate import Validate
from tidelake.transforms.window import Aggregate, millis

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from tidelake.config import Flow

Translation = Callable[["DataFrame", Any], "DataFrame"]
_views = itertools.count()
REASON = "__tidelake_reason"
"""Column ``validate`` adds: why the row failed its first rule, null for valid rows."""


def _sql(df: DataFrame, config: Any) -> DataFrame:
    view = f"__tidelake_batch_{next(_views)}"
    df.createOrReplaceTempView(view)
    return df.sparkSession.sql(to_spark(config.query, view))


def _filter(df: DataFrame, config: Any) -> DataFrame:
    return df.where(expression_to_spark(config.where))


def _derive(df: DataFrame, config: Any) -> DataFrame:
    from pyspark.sql import functions as F

    return df.withColumns(
        {name: F.expr(expression_to_spark(e)) for name, e in config.columns.items()}
    )


def _absent(df: DataFrame, names: list[str], what: str) -> None:
    absent = [n for n in names if n not in df.columns]
    if absent:
        raise ConfigError(
            f"{what}: column(s) {', '.join(absent)} not in the input "
            f"(columns: {', '.join(df.columns)}; fix the name or set strict: false)"
        )


def _rename(df: DataFrame, config: Any) -> DataFrame:
    if config.strict:
        _absent(df, list(config.columns), "rename")
    return df.withColumnsRenamed(config.columns)


def _drop(df: DataFrame, config: Any) -> DataFrame:
    if config.strict:
        _absent(df, config.columns, "drop")
    return df.drop(*config.columns)


def _pseudonymize(df: DataFrame, config: Any) -> DataFrame:
    from pyspark.sql import functions as F

    key = os.environ.get(config.key_env, "")
    if len(key.encode()) < MIN_KEY_BYTES:
        raise ConfigError(
            f"pseudonymize: environment variable {config.key_env} is not set or shorter than "
            f"{MIN_KEY_BYTES} bytes (export {config.key_env}=$(openssl rand -hex 32))"
        )
    inner, outer = (F.lit(pad) for pad in hmac_pads(key.encode()))
    present = [f for f in config.fields if f in df.columns]
    if len(present) != len(config.fields) and config.missing == "error":
        _absent(df, config.fields, "pseudonymize")

    def hmac(column: str) -> Any:
        text = F.encode(F.col(column).cast("string"), "UTF-8")
        digest = F.unhex(F.sha2(F.concat(inner, text), 256))
        return F.sha2(F.concat(outer, digest), 256)

    return df.withColumns({f: hmac(f) for f in present})


def _flatten(df: DataFrame, config: Any) -> DataFrame:
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    wanted = config.columns
    if wanted is None:
        wanted = [f.name for f in df.schema.fields if isinstance(f.dataType, StructType)]
    columns: list[Any] = []

    def expand(path: list[str], dtype: Any) -> None:
        if isinstance(dtype, StructType):
            for child in dtype.fields:
                expand([*path, child.name], child.dataType)
        else:
            ref = F.col(".".join(f"`{p}`" for p in path))
            columns.append(ref.alias(config.separator.join(path)))

    for f in df.schema.fields:
        if f.name in wanted:
            expand([f.name], f.dataType)
        else:
            columns.append(F.col(f"`{f.name}`"))
    out = df.select(*columns)
    dup = sorted({n for n in out.columns if out.columns.count(n) > 1})
    if dup:
        raise ConfigError(
            f"flatten: names {', '.join(dup)} would appear twice "
            f"(choose another separator than {config.separator!r} or rename first)"
        )
    return out


def _unwrap(df: DataFrame, config: Any) -> DataFrame:
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    provenance = [c for c in PROVENANCE if c in df.columns]
    if "payload" in df.columns and "op" not in df.columns:
        df = df.select("payload.*", *provenance)
    after = df.schema["after"].dataType if "after" in df.columns else None
    if "op" not in df.columns or not isinstance(after, StructType):
        raise ConfigError(
            "unwrap: the records are not Debezium change envelopes with an 'after' object "
            f"(columns: {', '.join(df.columns)}); put unwrap right after a topic source "
            "reading Debezium topics"
        )
    before = F.to_json("before") if "before" in df.columns else F.lit(None)
    image = F.from_json(F.when(F.col("op") == "d", before).otherwise(F.to_json("after")), after)

    def source(name: str, cast: str) -> Any:
        source = df.schema["source"].dataType if "source" in df.columns else None
        if isinstance(source, StructType) and name in source.fieldNames():
            return F.col(f"source.{name}").cast(cast)
        return F.lit(None).cast(cast)

    schema, table = source("schema", "string"), source("table", "string")
    ts = F.col("ts_ms").cast("long") if "ts_ms" in df.columns else F.lit(None).cast("long")
    out = df.select(
        image.alias("__image"),
        F.col("op").cast("string").alias("_op"),
        F.timestamp_millis(ts).alias("_ts"),
        source("lsn", "long").alias("_lsn"),
        F.when(schema.isNull(), table).otherwise(F.concat_ws(".", schema, table)).alias("_table"),
        *provenance,
    ).where(F.col("__image").isNotNull() & F.col("_op").isNotNull())
    if config.deletes == "drop":
        out = out.where(F.col("_op") != "d")
    if config.table is not None:
        wanted = F.lit(config.table)
        same = (F.col("_table") == wanted) | F.col("_table").endswith("." + config.table)
        out = out.where(same if "." not in config.table else F.col("_table") == wanted)
    rest = [c for c in out.columns if c != "__image"]
    return out.select("__image.*", *rest)


def _python(df: DataFrame, config: Any, base_dir: Path) -> DataFrame:
    import pyarrow as pa
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    from tidelake.transforms.python import load_function, to_table

    spec, args = config.function, dict(config.args)
    func = load_function(spec, base_dir)
    schema = to_table(func(to_arrow_schema(df.schema).empty_table(), **args), spec).schema
    untyped = [f.name for f in schema if pa.types.is_null(f.type)]
    if untyped:
        raise ConfigError(
            f"python transform {spec} on engine: spark: its result for an empty batch has no "
            f"type for column(s) {', '.join(untyped)}; Spark needs the result's columns and "
            "types before the first batch: return typed columns (pa.array([], pa.string()))"
        )

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        user = load_function(spec, base_dir)  # in each of Spark's Python workers
        for batch in batches:
            out = to_table(user(pa.Table.from_batches([batch]), **args), spec)
            yield from out.select(schema.names).cast(schema).to_batches()

    return df.mapInArrow(run, from_arrow_schema(schema))


def _validate(df: DataFrame, config: Any) -> DataFrame:
    import pyarrow as pa
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    schema = to_arrow_schema(df.schema).append(pa.field(REASON, pa.string()))
    Validate(config)  # a bad regex or expression fails here, not in a Python worker

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rules = Validate(config)  # in each of Spark's Python workers
        for batch in batches:
            table = pa.Table.from_batches([batch])
            out = table.append_column(REASON, rules.reasons(table))
            yield from out.cast(schema).to_batches()

    return df.mapInArrow(run, from_arrow_schema(schema))


SPARK_AGGREGATES = ("count", "sum", "min", "max", "avg")


def _window(df: DataFrame, config: Any) -> DataFrame:
    from pyspark.sql import functions as F

    every = config.every or config.hop
    size = f"{millis(config.size)} milliseconds"
    watermarked = df.withWatermark(config.time, f"{millis(config.allowed_lateness)} milliseconds")
    time = F.col(config.time)
    window = (
        F.window(time, size, f"{millis(every)} milliseconds") if every else F.window(time, size)
    )
    aggregates = []
    for name, text in config.aggregates.items():
        agg = Aggregate.parse(text)
        arg = agg.args[0]
        expr = F.expr(f"{agg.fn}({arg if arg == '*' else expression_to_spark(arg)})")
        aggregates.append((expr.cast("double") if agg.fn == "avg" else expr).alias(name))
    grouped = watermarked.groupBy(window.alias("__window"), *config.by).agg(*aggregates)
    return grouped.select(
        F.col("__window.start").cast("timestamp_ntz").alias("window_start"),
        F.col("__window.end").cast("timestamp_ntz").alias("window_end"),
        *config.by,
        *config.aggregates,
    )


def _window_problem(config: Any) -> tuple[str, str] | None:
    """(key, problem) when a window uses what Spark's event-time windows do not have."""
    for key in ("over", "gap"):
        if getattr(config, key):
            return key, (
                f"window {key}: does not translate to Spark (Spark runs tumbling windows, size, "
                "and sliding ones, size + every); keep engine: tidelake for this flow"
            )
    for name, text in config.aggregates.items():
        agg = Aggregate.parse(text)
        if agg.fn not in SPARK_AGGREGATES or agg.over:
            return f"aggregates.{name}", (
                f"{text!r} does not translate to Spark (Spark runs "
                f"{', '.join(SPARK_AGGREGATES)} without over); keep engine: tidelake"
            )
    return None


TRANSLATIONS: dict[str, Translation] = {
    "sql": _sql,
    "filter": _filter,
    "derive": _derive,
    "rename": _rename,
    "drop": _drop,
    "flatten": _flatten,
    "pseudonymize": _pseudonymize,
    "python": _python,  # type: ignore[dict-item]  # applied with the pipeline's base dir
    "unwrap": _unwrap,
    "window": _window,
    "validate": _validate,
}
SOURCES = ("topic", "file")
SINKS = ("lake", "table", "topic")


def split(flow: Flow) -> tuple[list[Any], list[Any]]:
    """The transforms the stream runs (through the first ``validate``, which adds ``REASON``)
    and those each micro-batch runs on the rows that passed it."""
    cut = next((i + 1 for i, t in enumerate(flow.transforms) if t.type == "validate"), None)
    if cut is None:
        return list(flow.transforms), []
    return list(flow.transforms[:cut]), list(flow.transforms[cut:])


def apply(df: DataFrame, transforms: list[Any], base_dir: Path) -> DataFrame:
    """``df`` through ``transforms`` as Spark operations (``base_dir``: where a python
    transform's file path starts)."""
    for transform in transforms:
        if transform.type == "python":
            df = _python(df, transform, base_dir)
        else:
            df = TRANSLATIONS[transform.type](df, transform)
    return df


def untranslatable(flow: Flow) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(location in the flow, problem) for each part of ``flow`` Spark cannot run."""
    if flow.source.type not in SOURCES:
        yield (
            ("source", "type"),
            (
                f"engine: spark reads {', '.join(SOURCES)} sources; a {flow.source.type!r} source "
                "runs on engine: tidelake (write it to a topic there and read that here)"
            ),
        )
    if flow.source.type == "file":
        yield from _file_problems(flow.source)
    if flow.sink.type not in SINKS:
        yield (
            ("sink", "type"),
            (
                f"engine: spark writes {', '.join(SINKS)} sinks; a {flow.sink.type!r} sink runs on "
                "engine: tidelake (land to a topic or the lake here and move it there)"
            ),
        )
    for i, t in enumerate(flow.transforms):
        if t.type not in TRANSLATIONS:
            yield (
                ("transforms", i, "type"),
                (
                    f"a {t.type!r} transform does not translate to Spark (Spark runs: "
                    f"{', '.join(TRANSLATIONS)}); keep engine: tidelake for this flow"
                ),
            )
            continue
        if t.type == "flatten" and getattr(t, "parse_json", None):
            yield (
                ("transforms", i, "parse_json"),
                (
                    "flatten parse_json: does not translate to Spark (the parsed type is decided "
                    "batch by batch); parse the JSON in a sql transform (from_json) or keep "
                    "engine: tidelake"
                ),
            )
            continue
        if t.type == "window" and any(v.type == "validate" for v in flow.transforms[:i]):
            yield (
                ("transforms", i, "type"),
                (
                    "on engine: spark a window cannot follow a validate (the rows after a "
                    "validate are handled micro-batch by micro-batch, without the window's "
                    "state); move the window before the validate or keep engine: tidelake"
                ),
            )
            continue
        if t.type == "window" and (problem := _window_problem(t)):
            yield ("transforms", i, *problem[0].split(".")), problem[1]
            continue
        for key, text in _sql_of(t).items():
            try:
                if key == "query":
                    to_spark(text)
                else:
                    expression_to_spark(text)
            except Untranslatable as e:
                yield ("transforms", i, *key.split(".")), str(e)


def _file_problems(config: Any) -> Iterator[tuple[tuple[Any, ...], str]]:
    """What a ``file`` source holds that Spark's file stream does not do."""
    keep = "; keep engine: tidelake for this flow (or land the files in a topic there)"
    if config.path.startswith("s3://"):
        yield ("source", "path"), f"engine: spark reads files from local paths, not S3{keep}"
    elif "**" in config.path:
        yield (
            ("source", "path"),
            (
                "engine: spark does not expand ** (Hadoop globs are one level each): give the "
                f"directory itself, which is read with every folder under it{keep}"
            ),
        )
    for key, problem in (
        ("records", "records: (a path inside each JSON document) has no Spark equivalent"),
        ("min_age", "min_age: Spark's file stream has no minimum file age"),
    ):
        if getattr(config, key):
            yield ("source", key), problem + keep


def _sql_of(t: Any) -> dict[str, str]:
    """The SQL texts of a transform config, by key (``columns.NAME`` for derive)."""
    if t.type == "sql":
        return {"query": t.query}
    if t.type == "filter":
        return {"where": t.where}
    if t.type == "derive":
        return {f"columns.{n}": e for n, e in t.columns.items()}
    if t.type == "window":
        aggregates = {n: Aggregate.parse(e).args[0] for n, e in t.aggregates.items()}
        return {f"aggregates.{n}": arg for n, arg in aggregates.items() if arg != "*"}
    return {}
