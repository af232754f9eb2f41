"""Runs flows: read -> transform -> land with checkpoint -> acknowledge, until stopped.

Commit order for every micro-batch (why exactly-once holds):
1. rows read since the last write are concatenated and transformed;
2. rejected rows go to the dead-letter topic, durable before anything is committed
   (at-least-once: a crash may repeat them, never lose them);
3. the sink writes the rows *and* the source positions in one atomic commit (positions of
   rows a transform still holds in memory, a window's open windows, are held back);
4. only then is the source told (Kafka offsets, replication LSN), which is advisory:
   on restart the source resumes from the sink's checkpoint, not from step 4.
A crash between any two steps re-reads at most the uncommitted batch, and the
sink's checkpoint makes re-landing it impossible: rows read again below the stored
position of their partition are dropped on arrival (``positions.fence``, for every sink).

Several workers of one flow (``--workers``) split the source's partitions. Each worker
claims the partitions it is assigned in the sink (``Sink.claim`` bumps their epochs) and
stores only the positions of the partitions it owns, with those epochs; the sink refuses
a commit carrying an epoch older than the stored one (``positions.merge``), so a worker
that lost a partition while paused cannot land its stale batch: the attempt fails with
``Fenced``, which is transient, and the worker rejoins the group. Transforms hear of claims
(with the stored checkpoint) and releases too (``Transform.claim``/``release``: a
``partitioned`` window restores or drops those partitions' state).

The same holds for failures that are not crashes, by one rule: once anything in an attempt
raised (a transform, the sink, a dead-letter write, the source), that attempt commits
nothing more: no rows, no positions, no group offsets, neither on close nor on partition
revocation (``_broken``). The flow then restarts from the sink's checkpoint, after a backoff
when the fault may clear by itself (``faults``), else after the user fixed the cause. Bad
*records* never fail a batch: values that do not fit their column (``conform``) and rows a
transform fails on (bisection, ``_apply``) become dead letters and the rest lands.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import pyarrow as pa

from tidelake import registry
from tidelake.broker import Broker, connect
from tidelake.config import Flow, Pipeline
from tidelake.errors import ConfigError, TidelakeError
from tidelake.runtime import dead_letters, faults, positions
from tidelake.runtime.base import Batch, Checkpoint, FlowContext, Sink, Source, Transform
from tidelake.runtime.conform import Conformer
from tidelake.runtime.metrics import FlowMetrics
from tidelake.vocabulary import pa_type

log = logging.getLogger(__name__)

READ_CHUNK = 20_000
"""Rows asked of a source per read: big batches still check their deadline between chunks."""
READ_WAIT_SECONDS = 0.5
"""Longest wait for a source's next record, whatever the batch latency: a stop request,
a rebalance and the published metrics are seen this often."""
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
"""Backoff between attempts after a transient fault: doubling from the first to the max."""


class FlowFailed(TidelakeError):
    """A flow ended on a fault that waiting cannot fix; the message is its one-line cause."""


def build(kind: registry.Kind, config: object) -> object:
    cls = registry.lookup(kind, config.type)  # type: ignore[attr-defined]
    return cls(config)


class FlowRunner:
    """Drives one flow in the calling thread until its source ends or ``stop`` is set."""

    def __init__(
        self,
        pipeline: Pipeline,
        name: str,
        stop: threading.Event | None = None,
        worker: str = "",
    ) -> None:
        if name not in pipeline.flows:
            raise ConfigError(
                f"flow {name!r} is not in pipeline {pipeline.name!r} "
                f"(flows: {', '.join(pipeline.flows)})"
            )
        self.pipeline = pipeline
        self.name = name
        self.spec: Flow = pipeline.flows[name]
        self.stop = stop or threading.Event()
        self.metrics = FlowMetrics(name, worker=worker)
        self.source: Source = build("source", self.spec.source)  # type: ignore[assignment]
        self.transforms: list[Transform] = [build("transform", t) for t in self.spec.transforms]  # type: ignore[misc]
        self.sink: Sink = build("sink", self.spec.sink)  # type: ignore[assignment]
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._positions: Checkpoint = {}
        self._floor: Checkpoint = {}
        self._epochs: Checkpoint = {}
        self._claimed_topics: set[str] = set()
        self._dirty = False
        dead_letters.dead_letter_topic(pipeline, name)  # names the flows when it is not one
        self._metrics_dir = pipeline.state_dir / "metrics"
        self._last_publish = 0.0

    def _broker(self) -> Broker:
        return connect(self.pipeline.url(self.pipeline.broker))

    def run(self) -> FlowMetrics:
        """Run until the source ends or ``stop`` is set.

        A transient fault (``faults.classify``) restarts the flow from the sink's checkpoint
        after a backoff, while ``metrics.state`` is ``retrying`` with the reason; any other
        failure ends the flow (``failed``) and is raised as :class:`FlowFailed`."""
        attempt = 0
        try:
            while True:
                batches = self.metrics.batches
                try:
                    self._run_once()
                    return self.metrics
                except Exception as e:
                    fault = faults.classify(e)
                    self.metrics.errors += 1
                    self.metrics.last_error = fault.reason
                    if fault.transient and self.stop.is_set():
                        self.metrics.state = "stopped"
                        return self.metrics
                    if not fault.transient:
                        self.metrics.state = "failed"
                        log.error("flow %s failed: %s", self.name, fault.reason)
                        log.debug("flow %s: traceback of the failure", self.name, exc_info=e)
                        raise FlowFailed(f"flow {self.name}: {fault.reason}") from e
                    attempt = 1 if self.metrics.batches > batches else attempt + 1
                    delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** (attempt - 1))
                    self.metrics.state = "retrying"
                    self.metrics.last_error = f"{fault.reason} (retry {attempt} in {delay:.1f}s)"
                    log.warning("flow %s: %s", self.name, self.metrics.last_error)
                    self._publish(force=True)
                    if self.stop.wait(delay):
                        self.metrics.state = "stopped"
                        return self.metrics
        finally:  # the final state (failed, with its error) is what /api/flows shows
            self._publish(force=True)

    def _run_once(self) -> None:
        """One attempt: open everything at the sink's checkpoint and drive the flow.

        Once anything raised, the attempt is *broken*: ``flush`` commits nothing more, not
        on close, not on partition revocation, so positions never pass data that did not
        land. The next attempt starts again from what the sink holds."""
        self._reset()
        ctx = FlowContext(
            flow=self.name,
            pipeline=self.pipeline,
            metrics=self.metrics,
            broker_factory=self._broker,
            dead_letter=self._dead_letter,
            flush=self.flush,
            committed=lambda: self.sink.checkpoint(),
            claim=self._claim,
            release=self._release,
            reads=self._reads,
            group=lambda: self.source.group_member(),
            worker=self.metrics.worker,
        )
        self.ctx = ctx
        settings = self.spec.batch
        try:
            self.sink.open(ctx)
            for t in self.transforms:
                t.open(ctx)
            self._positions = positions.positions_only(self.sink.checkpoint())
            self._floor = dict(self._positions)
            self.source.open(ctx, dict(self._positions))
            self.metrics.state = "running"
            first_at: float | None = None
            while not self.stop.is_set():
                # a batch's first record waits for the reads and the flush: the flush starts
                # early by what the last one took (at most half the latency, to still batch)
                due = settings.max_latency - min(
                    self.metrics.last_batch_seconds, settings.max_latency / 2
                )
                wait = min(
                    READ_WAIT_SECONDS,
                    due if first_at is None else max(0.0, due - (time.monotonic() - first_at)),
                )
                want = min(settings.size - self._pending_rows, READ_CHUNK)
                batch = self.source.read(want, wait)
                if batch is None:
                    self._finish()
                    break
                if (self._add(batch) or batch.positions) and first_at is None:
                    first_at = time.monotonic()
                full = self._pending_rows >= settings.size
                late = first_at is not None and time.monotonic() - first_at >= due
                if full or late:
                    self.flush()
                    first_at = None
                self._publish()
            self.flush()
            self.metrics.state = "finished" if not self.stop.is_set() else "stopped"
            self.metrics.last_error = ""
        except BaseException:
            self._broken = True
            raise
        finally:
            self._publish(force=True)
            for closer in (self.source.close, self.sink.close, self._dead_letters.close):
                try:
                    closer()
                except Exception:  # closing must not hide the error that stopped the flow
                    log.exception("flow %s: error while closing", self.name)
            if ctx._broker is not None:
                ctx._broker.close()

    def _reset(self) -> None:
        """Fresh connectors and empty buffers: an attempt shares nothing with the last."""
        self.source = build("source", self.spec.source)  # type: ignore[assignment]
        self.transforms = [build("transform", t) for t in self.spec.transforms]  # type: ignore[misc]
        self.sink = build("sink", self.spec.sink)  # type: ignore[assignment]
        self._pending, self._pending_rows = [], 0
        self._positions, self._dirty, self._broken = {}, False, False
        self._floor, self._epochs, self._claimed_topics = {}, {}, set()
        self._dead_letters = dead_letters.Writer(self.pipeline, self.name, lambda: self.ctx.broker)
        self._conform = Conformer({k: pa_type(v) for k, v in self.spec.schema_.items()})

    def _add(self, batch: Batch) -> bool:
        """Buffer a batch; True when it brought rows."""
        if batch.positions:
            self._positions.update(batch.positions)
            self._dirty = True
        n = batch.table.num_rows
        if not n:
            return False
        table, rejected, reasons = self._conform(positions.fence(batch.table, self._floor))
        self._dead_letter(rejected, reasons)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.metrics.records_in += n
        self.metrics.bytes_in += batch.table.nbytes
        return True

    def flush(self) -> None:
        """Transform and land what is buffered, with the positions it covers; then tell the
        source (advisory: a failure there is logged, the data and positions are stored)."""
        if self._broken or (not self._pending and not self._dirty):
            return
        started = time.perf_counter()
        table = _concat(self._pending) if self._pending else pa.table({})
        self._pending, self._pending_rows = [], 0
        table = self._transform(table, self.transforms)
        checkpoint = self._checkpoint()
        self.sink.write(table, checkpoint)
        self._floor.update(positions.positions_only(checkpoint))
        self._dirty = False
        try:
            if not (self.sink.commits_group_offsets and self.source.group_member()):
                self.source.committed(checkpoint)
        except Exception as e:
            log.warning("flow %s: acknowledging the source failed (advisory): %s", self.name, e)
        m = self.metrics
        m.records_out += table.num_rows
        m.batches += 1
        m.last_batch_seconds = time.perf_counter() - started
        m.last_checkpoint = time.time()

    def _transform(self, table: pa.Table, transforms: Sequence[Transform]) -> pa.Table:
        for t in transforms:
            if table.num_rows:
                table = self._apply(t, table)
        return table

    def _apply(self, transform: Transform, table: pa.Table) -> pa.Table:
        """Run one transform; when it raises, find the rows it fails on.

        A failure without any row (on the batch's empty slice: a column that does not exist,
        a syntax error) or on every row of a batch of several is the pipeline's, not the
        data's: it is raised and the flow stops where its positions are. Otherwise the batch
        is retried in halves
        (bisection, O(bad rows x log rows) calls) and the rows that fail alone become dead
        letters with the transform's error. Transforms that keep state across batches
        (``window``) cannot be replayed in parts: their errors are raised."""
        try:
            return transform(table)
        except Exception as e:
            if not transform.stateless or faults.classify(e).transient:
                raise
            try:
                transform(table.slice(0, 0))
            except Exception:
                raise e from None
            done: list[pa.Table] = []
            failed: list[tuple[pa.Table, str]] = []
            _bisect(transform, table, done, failed)
            if table.num_rows > 1 and sum(t.num_rows for t, _ in failed) == table.num_rows:
                raise
        kind = transform.config.type
        for rows, why in failed:
            self._dead_letter(rows, f"transform {kind} failed on this row: {why}")
        return _concat([t for t in done if t.num_columns]) if done else table.slice(0, 0)

    def _checkpoint(self) -> Checkpoint:
        """The positions to store: transforms holding rows in memory (``window``) hold them
        back and add their own keys (``Transform.checkpoint``)."""
        checkpoint = dict(self._positions)
        for t in self.transforms:
            checkpoint = t.checkpoint(checkpoint)
        return checkpoint | self._epochs

    def _reads(self, schema: pa.Schema) -> list[str] | None:
        """What the first transform reads of a source batch, and the columns ``schema:``
        declares (cast before the transforms); None for every column."""
        paths = self.transforms[0].reads(schema) if self.transforms else None
        return (
            None
            if paths is None
            else [*paths, *(c for c in self.spec.schema_ if c in schema.names)]
        )

    def _claim(self, keys: list[str]) -> Checkpoint:
        """Partitions assigned to this worker: claimed in the sink, resumed from its positions.

        From the first claim on, the worker stores positions of its own partitions of these
        topics only (the stored ones of other workers' partitions are theirs to move)."""
        stored = self.sink.claim(keys)
        new = {k.rpartition("/")[0] for k in keys} - self._claimed_topics
        self._positions = {
            k: v
            for k, v in self._positions.items()
            if not (positions.is_partition(k) and k.rpartition("/")[0] in new)
        }
        self._claimed_topics |= new
        for key in keys:
            for held in (self._positions, self._floor):
                if key in stored:
                    held[key] = stored[key]
                else:
                    held.pop(key, None)
            epoch = positions.epoch_key(key)
            if epoch in stored:
                self._epochs[epoch] = stored[epoch]
        resumed = positions.positions_only(stored)
        for t in self.transforms:
            t.claim(keys, resumed)
        return resumed

    def _release(self, keys: list[str]) -> None:
        for key in keys:
            self._positions.pop(key, None)
            self._epochs.pop(positions.epoch_key(key), None)
        for t in self.transforms:
            t.release(keys)

    def _finish(self) -> None:
        """The source ended: land what is buffered, then the rows transforms still hold
        (a window's open windows), through the transforms after them."""
        self.flush()
        for i, t in enumerate(self.transforms):
            table = self._transform(t.finish(), self.transforms[i + 1 :])
            if table.num_rows:
                self.sink.write(table, self._checkpoint())
                self.metrics.records_out += table.num_rows

    def _dead_letter(self, rows: pa.Table, reason: str | Sequence[str]) -> None:
        """Rows with one reason, or one reason per row, durable when it returns."""
        self.metrics.dead_letters += self._dead_letters.write(rows, reason)

    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_publish >= 1.0:
            self._last_publish = now
            try:
                self.metrics.save(self._metrics_dir)
            except OSError as e:  # a full disk: the flow waits it out, its counters can wait
                log.warning("flow %s: cannot publish its metrics: %s", self.name, e)


def _bisect(
    transform: Transform, table: pa.Table, done: list[pa.Table], failed: list[tuple[pa.Table, str]]
) -> None:
    """Split a failing batch until each part passes or is one row; results keep row order."""
    half = table.num_rows // 2
    for part in (table.slice(0, half), table.slice(half)):
        try:
            done.append(transform(part))
        except Exception as e:
            if part.num_rows == 1:
                failed.append((part, faults.classify(e).reason))
            else:
                _bisect(transform, part, done, failed)


def _concat(tables: list[pa.Table]) -> pa.Table:
    """One table from several reads; a column whose type differs between reads becomes text,
    so the sink decides per value what still casts (and dead-letters the rest)."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        types: dict[str, set[pa.DataType]] = {}
        for t in tables:
            for f in t.schema:
                types.setdefault(f.name, set()).add(f.type)
        mixed = {name for name, ts in types.items() if len(ts - {pa.null()}) > 1}
        from tidelake.db import nested_to_json

        def as_text(t: pa.Table) -> pa.Table:
            for i, f in enumerate(t.schema):
                if f.name in mixed and not pa.types.is_string(f.type):
                    col = nested_to_json(t.select([f.name])).column(0)
                    t = t.set_column(i, f.name, col.cast(pa.string()))
            return t

        return pa.concat_tables([as_text(t) for t in tables], promote_options="permissive")


def prepare_database(pipeline: Pipeline) -> None:
    """Run the pipeline's ``init_sql`` files (tables that CDC must see before rows arrive)."""
    if not pipeline.init_sql:
        return
    from tidelake.db import connect_db

    db = connect_db(pipeline.url(pipeline.database))
    try:
        for name in pipeline.init_sql:
            path = pipeline.path(name)
            try:
                script = path.read_text()
            except OSError as e:
                raise ConfigError(f"init_sql: cannot read {path}: {e.strerror}") from e
            db.run_script(script)
    finally:
        db.close()


class Runner(Protocol):
    """What drives one flow: tidelake's ``FlowRunner`` or ``tidelake.spark``'s runner."""

    name: str
    metrics: FlowMetrics

    def run(self) -> FlowMetrics: ...


def runner(pipeline: Pipeline, name: str, stop: threading.Event, worker: str = "") -> Runner:
    """The runner of flow ``name`` for its ``engine`` (``worker``: see ``FlowRunner``)."""
    flow = pipeline.flows.get(name)
    if flow is not None and flow.engine == "spark":
        from tidelake.spark.runner import SparkFlowRunner

        return SparkFlowRunner(pipeline, name, stop)
    return FlowRunner(pipeline, name, stop, worker)


def run_flows(
    pipeline: Pipeline,
    names: list[str],
    stop: threading.Event,
    on_start: Callable[[list[Runner]], None] | None = None,
    worker: str = "",
) -> list[Runner]:
    """Run several flows, each in its own thread, until they end or ``stop`` is set.

    A flow that fails ends alone (its state says ``failed``, with the error) and the others
    go on, unless the pipeline sets ``on_failure: stop-all``. Callers find failures in
    ``runner.metrics.state``; nothing is raised for them."""
    runners = [runner(pipeline, n, stop, worker) for n in names]
    prepare_database(pipeline)

    def target(r: Runner) -> None:
        try:
            r.run()
        except FlowFailed:
            if pipeline.on_failure == "stop-all":
                stop.set()
        except BaseException:
            log.exception("flow %s: unexpected error", r.name)
            r.metrics.state = "failed"
            stop.set()

    threads = [threading.Thread(target=target, args=(r,), name=f"flow-{r.name}") for r in runners]
    for t in threads:
        t.start()
    if on_start:
        on_start(runners)
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    return runners


def failed(runners: Sequence[Runner]) -> list[Runner]:
    """The flows that ended on an error."""
    return [r for r in runners if r.metrics.state == "failed"]
