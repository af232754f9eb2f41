"""Runs a flow with ``engine: spark`` as a Structured Streaming query, exactly once.

Commit order per micro-batch (why exactly-once holds):
1. Spark writes the batch's Kafka offset range to its checkpoint (the write-ahead log)
   before running it, so a restarted query re-runs the same batch with the same id;
2. the lake sink (``foreachBatch``) appends the rows in one Iceberg snapshot whose summary
   carries ``tidelake.spark.<flow>`` = ``<query id>/<batch id>``;
3. a re-run batch whose id the table's newest such entry already holds lands nothing, so a
   driver killed between 2 and Spark's commit log lands nothing twice (it still runs to the
   end, into Spark's no-op sink: a window's state stores must commit in every batch).

The ``table`` and ``topic`` sinks are tidelake's own: the micro-batch comes to the driver as
Arrow and the sink writes it with ``spark:<query id>`` = batch id as its checkpoint, in the
same commit as the rows (the table's transaction, the topic's log transaction), and skips a
re-run batch at or below it. The rows it rejects go to the flow's dead-letter topic.

Rows come from ``spark.sources`` (Kafka or files, with the embedded engine's columns). Records
that do not decode go to the dead-letter topic through a second query, and rows ``validate``
rejects from each micro-batch before it lands (both at least once, as on the embedded engine).
A flow reading files once (``watch: false``) ends when both queries read every file.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any

from tidelake import registry
from tidelake.broker import Broker, connect
from tidelake.config import Flow, Pipeline
from tidelake.errors import ConfigError
from tidelake.lake.catalog import CATALOG_NAME, identifier_part, namespace, open_catalog
from tidelake.runtime import dead_letters
from tidelake.runtime.base import PROVENANCE, FlowContext, Sink
from tidelake.runtime.dead_letters import RAW
from tidelake.runtime.metrics import FlowMetrics
from tidelake.spark import session as spark_session
from tidelake.spark import sources as spark_sources
from tidelake.spark.translate import REASON, apply, split, untranslatable

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger(__name__)

SUMMARY_PREFIX = "tidelake.spark."


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
        self._checkpoint = f"{spark_session.checkpoint_root(pipeline).rstrip('/')}/{name}"
        self._id: str | None = None  # the query's id, from its checkpoint
        self._summary_key = SUMMARY_PREFIX + name
        self._naive: set[str] = set()  # top-level columns tidelake decodes as naive timestamps
        self._finite = False  # files read once: the queries end by themselves
        self._undecoded = ""  # the reason given to records that do not decode
        self._seen = -1  # the last micro-batch counted in the metrics
        self._sink: Sink | None = None  # a table or topic sink, opened by the first batch
        self._broker: Broker | None = None
        self._dead_letters = dead_letters.Writer(pipeline, name, self._pipeline_log)
        self._streamed, self._batched = split(self.spec)

    def _pipeline_log(self) -> Broker:
        if self._broker is None:
            self._broker = connect(self.pipeline.url(self.pipeline.broker))
        return self._broker

    def run(self) -> FlowMetrics:
        spark = spark_session.session(self.pipeline)
        queries: list[StreamingQuery] = []
        try:
            try:
                queries = self._start(spark)
            except ConfigError:  # or stopped while waiting for the first records
                if not self.stop.is_set():
                    raise
            self.metrics.state = "running"
            while any(q.isActive for q in queries) and not self.stop.wait(0.5):
                self._observe(queries[0])
                self.metrics.save(self._metrics_dir)
            for query in queries[:1]:
                self._observe(query)
            failed = [e for q in queries if (e := q.exception()) is not None]
            if not self.stop.is_set() and (failed or not self._finite):
                why = failed[0] if failed else "stopped"
                raise ConfigError(f"flow {self.name}: spark query ended: {why}")
        except Exception as e:
            self.metrics.state = "failed"
            self.metrics.errors += 1
            self.metrics.last_error = str(e).splitlines()[0]
            self.metrics.save(self._metrics_dir)
            raise
        finally:
            for query in queries:
                if query.isActive:
                    query.stop()
            for closer in (self._sink, self._dead_letters, self._broker):
                if closer is not None:
                    closer.close()
        self.metrics.state = "stopped"
        self.metrics.save(self._metrics_dir)
        return self.metrics

    def _observe(self, query: StreamingQuery) -> None:
        """Count the micro-batches ``query`` finished since the last call."""
        m = self.metrics
        for progress in query.recentProgress:
            if progress["batchId"] <= self._seen:
                continue
            self._seen = progress["batchId"]
            m.batches += 1
            m.records_in += int(progress.get("numInputRows") or 0)
            m.last_batch_seconds = (progress.get("batchDuration") or 0) / 1000
            lags = [
                float(s.get("metrics", {}).get("maxOffsetsBehindLatest") or 0)
                for s in progress.get("sources", [])
            ]
            m.lag = int(sum(lags))
            m.last_checkpoint = time.time()

    def _start(self, spark: SparkSession) -> list[StreamingQuery]:
        """The flow's query, and the one sending undecodable records to the dead letters."""
        from pyspark.sql import functions as F

        read = spark_sources.files if self.spec.source.type == "file" else spark_sources.topic
        stream = read(spark, self.pipeline, self.name, self.stop)
        self._naive, self._finite, self._undecoded = stream.naive, stream.finite, stream.reason
        rows = stream.rows.where(F.col(RAW).isNull()).drop(RAW)
        # every column: Spark refuses a query of the corrupt-record column alone
        undecoded = stream.rows.where(F.col(RAW).isNotNull())
        flow = apply(rows, self._streamed, self.pipeline.base_dir)
        return [
            self._query(flow, self._checkpoint, self._land, ""),
            self._query(
                undecoded,
                self._checkpoint + ".undecoded",
                self._reject_undecoded,
                "undecoded",
            ),
        ]

    def _query(self, df: DataFrame, checkpoint: str, land: Any, what: str) -> StreamingQuery:
        writer = (
            df.writeStream.queryName(".".join(filter(None, (self.pipeline.name, self.name, what))))
            .outputMode("append")  # a window lands once, when the watermark passes its end
            .option("checkpointLocation", checkpoint)
            .foreachBatch(land)
        )
        if self._finite:
            return writer.trigger(availableNow=True).start()
        return writer.trigger(processingTime=f"{self.spec.batch.max_latency} seconds").start()

    def _reject_undecoded(self, batch: DataFrame, batch_id: int) -> None:
        rows = batch.toArrow()
        rows = rows.select([c for c in (RAW, *PROVENANCE) if c in rows.column_names])
        if rows.num_rows:
            self.metrics.dead_letters += self._dead_letters.write(rows, self._undecoded)

    def _land(self, batch: DataFrame, batch_id: int) -> None:
        """One micro-batch: its rejected rows to the dead-letter topic, the rest through the
        transforms after ``validate`` into the sink, once per batch id."""
        if self._landed(batch_id):  # run to the end all the same: a window's state stores
            log.info("flow %s: batch %s already landed, skipped", self.name, batch_id)
            batch.write.format("noop").mode("overwrite").save()  # commit in every batch
            return
        if not self._batched and REASON not in batch.columns:
            return self._write(batch, batch_id)
        batch = batch.cache()
        try:
            self._reject(batch)
            valid = batch.where(batch[REASON].isNull()).drop(REASON)
            self._write(apply(valid, self._batched, self.pipeline.base_dir), batch_id)
        finally:
            batch.unpersist()

    def _reject(self, batch: DataFrame) -> None:
        """The rows ``validate`` gave a reason, to the dead-letter topic with it."""
        rejected = batch.where(batch[REASON].isNotNull()).toArrow()
        if rejected.num_rows:
            reasons = rejected.column(REASON).to_pylist()
            written = self._dead_letters.write(rejected.drop_columns([REASON]), reasons)
            self.metrics.dead_letters += written

    def _landed(self, batch_id: int) -> bool:
        """Whether the sink already holds micro-batch ``batch_id`` of this query."""
        if self.spec.sink.type != "lake":
            return self._open_sink().checkpoint().get(self._sink_key(), -1) >= batch_id
        catalog = open_catalog(self.pipeline)
        ident = self._lake_table()
        if not catalog.table_exists(ident):
            return False
        last = _landed(catalog.load_table(ident), self._summary_key)
        return bool(last and _covers(last, f"{self._query_id()}/{batch_id}"))

    def _lake_table(self) -> str:
        return f"{namespace(self.pipeline)}.{identifier_part(self.spec.sink.table)}"  # type: ignore[attr-defined]

    def _write(self, batch: DataFrame, batch_id: int) -> None:
        if self.spec.sink.type == "lake":
            self._append(batch, batch_id)
        else:
            rows = batch.toArrow()
            self._open_sink().write(rows, {self._sink_key(): batch_id})
            self.metrics.records_out += rows.num_rows

    def _append(self, batch: DataFrame, batch_id: int) -> None:
        """Append one micro-batch to the lake table in one snapshot marked with its batch id."""
        from pyspark.sql import functions as F
        from pyspark.sql.types import TimestampType

        naive = {f.name: F.col(f.name).cast("timestamp_ntz") for f in batch.schema.fields
                 if isinstance(f.dataType, TimestampType) and f.name in self._naive}  # fmt: skip
        rows = batch.withColumns(naive) if naive else batch
        target = f"{CATALOG_NAME}.{self._lake_table()}"
        spark = batch.sparkSession
        if not spark.catalog.tableExists(target):
            rows.limit(0).writeTo(target).using("iceberg").createOrReplace()
        rows = rows.cache()
        try:
            count = rows.count()
            if count:
                mark = f"{self._query_id()}/{batch_id}"
                rows.writeTo(target).option(f"snapshot-property.{self._summary_key}", mark).append()
        finally:
            rows.unpersist()
        self.metrics.records_out += count

    def _open_sink(self) -> Sink:
        """tidelake's table or topic sink, opened by the first micro-batch."""
        if self._sink is None:
            sink: Sink = registry.lookup("sink", self.spec.sink.type)(self.spec.sink)
            sink.open(self._context())
            self._sink = sink
        return self._sink

    def _sink_key(self) -> str:
        return f"spark:{self._query_id()}"

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
        """The query's id, which its checkpoint keeps across restarts (read through Hadoop's
        filesystem, so on S3 too)."""
        if self._id is None:
            spark = spark_session.session(self.pipeline)
            jvm = spark.sparkContext._jvm  # noqa: SLF001
            path = jvm.org.apache.hadoop.fs.Path(self._checkpoint + "/metadata")  # type: ignore[union-attr]
            fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())  # noqa: SLF001  # type: ignore[union-attr]
            stream = fs.open(path)
            try:
                text = jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")  # type: ignore[union-attr]
            finally:
                stream.close()
            self._id = str(json.loads(text.splitlines()[0])["id"])
        return self._id


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
