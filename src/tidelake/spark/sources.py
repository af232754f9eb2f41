"""A flow's source as a Spark streaming DataFrame, decoded to the embedded engine's columns.

- ``topic``: Spark's Kafka source; each value decoded by Spark's JSON reader with the schema
  ``formats.decode_json`` gives the topic's first records, plus ``_topic``/``_partition``/
  ``_offset``;
- ``file``: Spark's file stream over the same files; the schema is the one tidelake's own
  file source (``sources.file``) gives the first file's rows, so both engines see the same
  columns and types. ``watch: false`` reads the files there are and ends (Spark's
  ``availableNow`` trigger), ``watch: true`` keeps picking up new ones.

A record that does not decode into those columns and types is not dropped: its text is in
the ``RAW`` column (null for good rows), and the runner sends it to the dead-letter topic
with ``UNDECODED`` as its reason. Top-level ISO 8601 times without an offset are read as
zoned times and listed in ``Stream.naive``, for the lake sink to store them as naive ones,
as the embedded engine does.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tidelake.broker import connect
from tidelake.errors import ConfigError
from tidelake.formats import decode_json
from tidelake.runtime.base import FlowContext
from tidelake.runtime.dead_letters import RAW
from tidelake.runtime.metrics import FlowMetrics

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from tidelake.config import Pipeline

log = logging.getLogger(__name__)

SAMPLE = 1000
"""Records read (from the start of the topic, or the first file) to infer the schema."""
SAMPLE_WAIT = 10.0
UNDECODED = (
    "does not decode into the columns and types engine: spark infers from the first records "
    "({columns}); force a column's type upstream or keep engine: tidelake"
)
FORMATS = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}


@dataclass
class Stream:
    """The source's rows (with ``RAW``), the columns to land as naive times, and whether the
    stream ends by itself (files read once)."""

    rows: DataFrame
    naive: set[str]
    finite: bool
    reason: str


def kafka_servers(pipeline: Pipeline, flow: str) -> str:
    broker = pipeline.url(pipeline.broker)
    if not broker.startswith("kafka://"):
        raise ConfigError(
            f"flow {flow}: engine: spark reads topics from Kafka, not from the embedded log "
            f"({broker}); set broker: kafka://host:port (or keep engine: tidelake)"
        )
    return broker[len("kafka://") :].rstrip("/")


def topic(spark: SparkSession, pipeline: Pipeline, flow: str, stop: threading.Event) -> Stream:
    from pyspark.sql import functions as F

    spec = pipeline.flows[flow]
    topics = spec.source.topic  # type: ignore[attr-defined]
    names = [topics] if isinstance(topics, str) else list(topics)
    schema, naive = _spark_schema(_topic_sample(pipeline, names, stop), f"flow {flow}")
    stream = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", kafka_servers(pipeline, flow))
        .option("subscribe", ",".join(names))
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "true")
        .option("maxOffsetsPerTrigger", str(spec.batch.size))
        .load()
    )
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": RAW}
    record = F.from_json(F.col("value").cast("string"), _with_raw(schema), options)
    rows = (
        stream.where(F.col("value").isNotNull())
        .select(
            record.alias("__record"),
            F.col("topic").alias("_topic"),
            F.col("partition").alias("_partition"),
            F.col("offset").alias("_offset"),
        )
        .select("__record.*", "_topic", "_partition", "_offset")
    )
    return Stream(rows, naive, False, _reason(schema))


def files(spark: SparkSession, pipeline: Pipeline, flow: str, stop: threading.Event) -> Stream:
    from pyspark.sql import functions as F

    spec = pipeline.flows[flow]
    config: Any = spec.source
    path = pipeline.path(config.path)
    sample, fmt = _file_sample(pipeline, flow)
    schema, naive = _spark_schema(sample.drop_columns([c for c in [config.file_column] if c]),
                                  f"flow {flow}")  # fmt: skip
    reader = spark.readStream.format(FORMATS[fmt]).option("maxFilesPerTrigger", "1")
    if path.is_dir():
        reader = reader.option("recursiveFileLookup", "true")
    if fmt == "parquet":
        reader = reader.schema(schema)
    else:
        reader = reader.schema(_with_raw(schema)).options(
            mode="PERMISSIVE", columnNameOfCorruptRecord=RAW
        )
    if fmt == "csv":
        sep = config.delimiter or ("\t" if ".tsv" in str(path).lower() else ",")
        reader = reader.options(header="true", sep=sep)
    if config.format == "json" or (fmt == "json" and str(path).lower().endswith(".json")):
        reader = reader.option("multiLine", "true")  # a JSON array per file
    rows = reader.load(str(path))
    if fmt == "parquet":
        rows = rows.withColumn(RAW, F.lit(None).cast("string"))
    if config.file_column:  # the file's path relative to the pipeline file, as tidelake's
        absolute = F.regexp_replace("_metadata.file_path", "^file:(//)?", "")
        base = str(pipeline.base_dir.resolve()) + "/"
        relative = F.when(absolute.startswith(base), F.substring(absolute, len(base) + 1, 1 << 20))
        rows = rows.withColumn(config.file_column, relative.otherwise(absolute))
    return Stream(rows, naive, not config.watch, _reason(schema))


def _with_raw(schema: Any) -> Any:
    from pyspark.sql.types import StringType, StructField, StructType

    return StructType([*schema.fields, StructField(RAW, StringType(), True)])


def _reason(schema: Any) -> str:
    columns = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in schema.fields)
    return UNDECODED.format(columns=columns)


def _spark_schema(table: pa.Table, what: str) -> tuple[Any, set[str]]:
    """The Spark schema of the embedded engine's decoding, with naive times read as zoned."""
    from pyspark.sql.pandas.types import from_arrow_schema
    from pyspark.sql.types import StructField, StructType, TimestampNTZType, TimestampType

    if not table.num_columns:
        raise ConfigError(
            f"{what}: engine: spark infers the records' columns from its input, which has no "
            "records yet; start the flows writing it first"
        )
    fields = from_arrow_schema(table.schema).fields
    naive = {f.name for f in fields if isinstance(f.dataType, TimestampNTZType)}
    zoned = [  # ISO 8601 text with its offset parses into Spark's zoned timestamps
        StructField(f.name, TimestampType(), f.nullable) if f.name in naive else f for f in fields
    ]
    return StructType(zoned), naive


def _topic_sample(pipeline: Pipeline, topics: list[str], stop: threading.Event) -> pa.Table:
    """The topic's first records as the embedded engine decodes them, read without Spark;
    waits for the first one (until ``stop``), then reads for ``SAMPLE_WAIT`` s at most."""
    broker = connect(pipeline.url(pipeline.broker))
    consumer = broker.consumer(f"tidelake-spark-schema-{uuid.uuid4().hex[:8]}", topics)
    values: list[bytes | None] = []
    deadline, waiting = math.inf, False
    try:
        while len(values) < SAMPLE and not stop.is_set():
            batch = consumer.poll(SAMPLE - len(values), 1.0)
            values += [v for v in batch.values if v is not None]
            if not values:
                if not waiting:
                    log.info("waiting for the first records of %s (the query's columns are "
                             "theirs)", ", ".join(topics))  # fmt: skip
                waiting = True
                continue
            deadline = min(deadline, time.monotonic() + SAMPLE_WAIT)
            if not len(batch) or time.monotonic() > deadline:
                break
    finally:
        consumer.close()
        broker.close()
    return decode_json(values)[0]


def _file_sample(pipeline: Pipeline, flow: str) -> tuple[pa.Table, str]:
    """The first rows tidelake's own file source reads, and the files' format."""
    from tidelake.sources.file import FileSource

    spec = pipeline.flows[flow]
    source = FileSource(spec.source)  # type: ignore[arg-type]
    ctx = FlowContext(flow=flow, pipeline=pipeline, metrics=FlowMetrics(flow),
                      broker_factory=_no_log)  # fmt: skip
    source.open(ctx, {})
    try:
        batch = source.read(SAMPLE, SAMPLE_WAIT)
        formats = source.formats()
    finally:
        source.close()
    if len(formats) > 1:
        raise ConfigError(
            f"flow {flow}: engine: spark reads one format per file source, and "
            f"{spec.source.path!r} holds {', '.join(sorted(formats))} files; "  # type: ignore[attr-defined]
            "set format: or narrow the path"
        )
    return (batch.table if batch is not None else pa.table({})), next(iter(formats), "jsonl")


def _no_log() -> Any:
    raise ConfigError("reading a file's first rows for its schema writes nowhere")
