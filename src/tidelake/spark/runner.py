"""Runs a flow with ``engine: spark`` as a Structured Streaming query, exactly once.

Commit order per micro-batch (why exactly-once holds):
1. Spark writes the batch's Kafka offset range to its checkpoint (the write-ahead log)
   before running it, so a restarted query re-runs the same batch with the same id;
2. the lake sink (``foreachBatch``) appends the rows in one Iceberg snapshot whose summary
   carries ``tidelake.spark.<flow>`` = ``<query id>/<batch id>``;
3. a re-run batch whose id the table's newest such entry already holds is skipped, so a
   driver killed between 2 and Spark's commit log lands nothing twice.

The ``table`` and ``topic`` sinks are tidelake's own: the micro-batch comes to the driver as
Arrow and the sink writes it with ``spark:<query id>`` = batch id as its checkpoint, in the
same commit as the rows (the table's transaction, the topic's log transaction), and skips a
re-run batch at or below it. The rows it rejects go to the flow's dead-letter topic.

Records are the same JSON documents the embedded engine reads, decoded by Spark's JSON reader
with a schema inferred from the records already in the topic (top-level ISO 8601 strings
become timestamps, as ``formats.times`` does), plus ``_topic``/``_partition``/``_offset``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidelake import registry
from tidelake.broker import Broker, connect
from tidelake.config import Flow, Pipeline
from tidelake.errors import ConfigError
from tidelake.formats import decode_json
from tidelake.runtime import dead_letters
from tidelake.runtime.base import FlowContext, Sink
from tidelake.runtime.metrics import FlowMetrics
from tidelake.spark import session as spark_session
from tidelake.spark.translate import apply, untranslatable

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger(__name__)

SUMMARY_PREFIX = "tidelake.spark."
SCHEMA_SAMPLE = 1000
"""Records read from the start of the topic to infer the JSON schema (for ``SCHEMA_WAIT`` s
at most)."""
SCHEMA_WAIT = 10.0


class SparkFlowRunner:
    """Drives one flow as a Spark streaming query until ``stop`` is set (same surface as
    ``runtime.runner.FlowRunner``: ``name``, ``metrics``, ``run``)."""

    def __init__(self, pipeline: Pipeline, name: str, stop: threading.Event | None = None) -> None:
        self.pipeline = pipeline
        self.name = name
        self.spec: Flow = pipeline.flows[name]
        self.stop = stop or threading.Event()
        self.metrics = FlowMetrics(name)
        problems = [f"flows.{name}.{'.'.join(map(str, loc))}: {msg}"
                    for loc, msg in untranslatable(self.spec)]  # fmt: skip
        if problems:
            raise ConfigError("\n".join(problems))
        self._metrics_dir = pipeline.state_dir / "metrics"
        self._checkpoint = Path(spark_session.checkpoint_root(pipeline)) / name
        self._summary_key = SUMMARY_PREFIX + name
        self._naive: set[str] = set()  # top-level columns tidelake decodes as naive timestamps
        self._sink: Sink | None = None  # a table or topic sink, opened by the first batch
        self._broker: Broker | None = None
        self._dead_letters = dead_letters.Writer(pipeline, name, self._pipeline_log)

    def _pipeline_log(self) -> Broker:
        if self._broker is None:
            self._broker = connect(self.pipeline.url(self.pipeline.broker))
        return self._broker

    def run(self) -> FlowMetrics:
        spark = spark_session.session(self.pipeline)
        query = self._start(spark)
        self.metrics.state = "running"
        seen = -1
        try:
            while query.isActive and not self.stop.wait(0.5):
                progress = query.lastProgress
                if progress and progress["batchId"] != seen:
                    seen = progress["batchId"]
                    self._observe(progress)
                self.metrics.save(self._metrics_dir)
            if not self.stop.is_set():
                exc = query.exception()
                raise ConfigError(f"flow {self.name}: spark query ended: {exc}")
        except Exception as e:
            self.metrics.state = "failed"
            self.metrics.errors += 1
            self.metrics.last_error = str(e).splitlines()[0]
            self.metrics.save(self._metrics_dir)
            raise
        finally:
            if query.isActive:
                query.stop()
            for closer in (self._sink, self._dead_letters, self._broker):
                if closer is not None:
                    closer.close()
        self.metrics.state = "stopped"
        self.metrics.save(self._metrics_dir)
        return self.metrics

    def _observe(self, progress: dict[str, Any]) -> None:
        m = self.metrics
        m.batches += 1
        m.records_in += int(progress.get("numInputRows") or 0)
        m.last_batch_seconds = (progress.get("batchDuration") or 0) / 1000
        lags = [
            float(s.get("metrics", {}).get("maxOffsetsBehindLatest") or 0)
            for s in progress.get("sources", [])
        ]
        m.lag = int(sum(lags))
        m.last_checkpoint = time.time()

    def _start(self, spark: SparkSession) -> StreamingQuery:
        df = apply(self._source(spark), self.spec, self.pipeline.base_dir)
        return (
            df.writeStream.queryName(f"{self.pipeline.name}.{self.name}")
            .outputMode("append")  # a window lands once, when the watermark passes its end
            .option("checkpointLocation", str(self._checkpoint))
            .trigger(processingTime=f"{self.spec.batch.max_latency} seconds")
            .foreachBatch(self._land)
            .start()
        )

    def _kafka(self, reader: Any) -> Any:
        broker = self.pipeline.url(self.pipeline.broker)
        if not broker.startswith("kafka://"):
            raise ConfigError(
                f"flow {self.name}: engine: spark reads topics from Kafka, not from the "
                f"embedded log ({broker}); set broker: kafka://host:port "
                "(or keep engine: tidelake)"
            )
        topics = self.spec.source.topic  # type: ignore[attr-defined]
        return (
            reader.format("kafka")
            .option("kafka.bootstrap.servers", broker[len("kafka://") :].rstrip("/"))
            .option("subscribe", topics if isinstance(topics, str) else ",".join(topics))
            .option("startingOffsets", "earliest")
            .option("failOnDataLoss", "true")
        )

    def _source(self, spark: SparkSession) -> DataFrame:
        from pyspark.sql import functions as F

        stream = (
            self._kafka(spark.readStream)
            .option("maxOffsetsPerTrigger", str(self.spec.batch.size))
            .load()
        )
        record = F.from_json(F.col("value").cast("string"), self._infer())
        return (
            stream.where(F.col("value").isNotNull())
            .select(
                record.alias("__record"),
                F.col("topic").alias("_topic"),
                F.col("partition").alias("_partition"),
                F.col("offset").alias("_offset"),
            )
            .select("__record.*", "_topic", "_partition", "_offset")
        )

    def _infer(self) -> Any:
        """The records' Spark schema: the embedded engine's decoding (``formats.decode_json``)
        of the topic's first records, read without a Spark job, so both engines see the same
        columns."""
        from pyspark.sql.pandas.types import from_arrow_schema
        from pyspark.sql.types import StructField, StructType, TimestampNTZType, TimestampType

        topics = self.spec.source.topic  # type: ignore[attr-defined]
        broker = connect(self.pipeline.url(self.pipeline.broker))
        consumer = broker.consumer(
            f"tidelake-spark-schema-{uuid.uuid4().hex[:8]}",
            [topics] if isinstance(topics, str) else topics,
        )
        values: list[bytes | None] = []
        try:
            deadline = time.monotonic() + SCHEMA_WAIT
            while len(values) < SCHEMA_SAMPLE and time.monotonic() < deadline:
                batch = consumer.poll(SCHEMA_SAMPLE - len(values), 1.0)
                values += [v for v in batch.values if v is not None]
                if values and not len(batch):
                    break
        finally:
            consumer.close()
            broker.close()
        table, _ = decode_json(values)
        if not table.num_columns:
            raise ConfigError(
                f"flow {self.name}: engine: spark infers the records' columns from the topic, "
                "which has no records yet; start the flows writing it first"
            )
        fields = from_arrow_schema(table.schema).fields
        self._naive = {f.name for f in fields if isinstance(f.dataType, TimestampNTZType)}
        zoned = [  # ISO 8601 text with its offset parses into Spark's zoned timestamps
            StructField(f.name, TimestampType(), f.nullable) if f.name in self._naive else f
            for f in fields
        ]
        return StructType(zoned)

    def _land(self, batch: DataFrame, batch_id: int) -> None:
        """Append one micro-batch to the lake table, once per batch id."""
        if self.spec.sink.type != "lake":
            return self._land_through_sink(batch, batch_id)
        from pyspark.sql import functions as F
        from pyspark.sql.types import TimestampType

        from tidelake.lake.catalog import CATALOG_NAME, identifier_part, namespace, open_catalog

        table_name = identifier_part(self.spec.sink.table)  # type: ignore[attr-defined]
        ident = f"{namespace(self.pipeline)}.{table_name}"
        mark = f"{self._query_id()}/{batch_id}"
        catalog = open_catalog(self.pipeline)
        if catalog.table_exists(ident):
            last = _landed(catalog.load_table(ident), self._summary_key)
            if last and _covers(last, mark):
                log.info("flow %s: batch %s already landed, skipped", self.name, batch_id)
                return
        naive = {f.name: F.col(f.name).cast("timestamp_ntz") for f in batch.schema.fields
                 if isinstance(f.dataType, TimestampType) and f.name in self._naive}  # fmt: skip
        rows = batch.withColumns(naive) if naive else batch
        target = f"{CATALOG_NAME}.{ident}"
        spark = batch.sparkSession
        if not spark.catalog.tableExists(target):
            rows.limit(0).writeTo(target).using("iceberg").createOrReplace()
        rows = rows.cache()
        try:
            count = rows.count()
            if count:
                rows.writeTo(target).option(f"snapshot-property.{self._summary_key}", mark).append()
        finally:
            rows.unpersist()
        self.metrics.records_out += count

    def _land_through_sink(self, batch: DataFrame, batch_id: int) -> None:
        """One micro-batch through tidelake's table or topic sink, once per batch id."""
        if self._sink is None:
            sink: Sink = registry.lookup("sink", self.spec.sink.type)(self.spec.sink)
            sink.open(self._context())
            self._sink = sink
        key = f"spark:{self._query_id()}"
        if self._sink.checkpoint().get(key, -1) >= batch_id:
            log.info("flow %s: batch %s already landed, skipped", self.name, batch_id)
            return
        rows = batch.toArrow()
        self._sink.write(rows, {key: batch_id})
        self.metrics.records_out += rows.num_rows

    def _context(self) -> FlowContext:
        def dead_letter(rows: Any, reason: Any) -> None:
            self.metrics.dead_letters += self._dead_letters.write(rows, reason)

        return FlowContext(
            flow=self.name,
            pipeline=self.pipeline,
            metrics=self.metrics,
            broker_factory=self._pipeline_log,
            dead_letter=dead_letter,
            committed=lambda: self._sink.checkpoint() if self._sink else {},
        )

    def _query_id(self) -> str:
        return str(json.loads((self._checkpoint / "metadata").read_text())["id"])


def _landed(table: Any, key: str) -> str | None:
    """The newest ``<query id>/<batch id>`` the table's snapshots hold under ``key``."""
    from pyiceberg.table.snapshots import ancestors_of

    current = table.metadata.current_snapshot()
    if current is None:
        return None
    for snapshot in ancestors_of(current, table.metadata):
        value = snapshot.summary.additional_properties.get(key) if snapshot.summary else None
        if value:
            return str(value)
    return None


_MARK = re.compile(r"^(.*)/(\d+)$")


def _covers(landed: str, mark: str) -> bool:
    """Whether batch ``mark`` of a query is at or below the ``landed`` one of the same query."""
    a, b = _MARK.match(landed), _MARK.match(mark)
    return bool(a and b and a.group(1) == b.group(1) and int(b.group(2)) <= int(a.group(2)))
