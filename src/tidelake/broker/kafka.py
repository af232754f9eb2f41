"""Kafka backend of the log contract, on confluent-kafka (librdkafka).

URL: ``kafka://host:port[,host:port][?librdkafka.option=value&...]``; query
options are passed to every client (e.g. ``security.protocol``, ``sasl.*``).

Choices (see ``tidelake.broker.base`` for the contract):

- Producer: idempotent (``enable.idempotence``, ``acks=all``), lz4, 5 ms linger.
  Keyed records are partitioned with ``murmur2_random`` -- the Java client's
  partitioner, so tidelake, Kafka Connect/Debezium and JVM producers agree on
  where a key lives. Unkeyed records use sticky random partitioning. Delivery
  reports are requested for failures only (no Python callback per record);
  ``flush`` raises :class:`ConnectorError` when any record failed.
- Transactions: ``transactional_producer`` is a producer with ``transactional.id``;
  ``init_transactions`` on creation fences older producers with the same id (and aborts
  their open transaction). Fencing and fatal errors raise :class:`ConnectorError`; an
  abortable error aborts the transaction, then raises. ``transaction.timeout.ms`` is 10 s
  (Kafka Streams' choice): a transaction left open by a killed process blocks
  read_committed consumers of its partitions until the restarted producer aborts it or
  the coordinator times it out. librdkafka does not always honour the timeout of a
  transactional call (``send_offsets_to_transaction`` can wait for ever for a group
  coordinator it lost track of in a broker restart: librdkafka issues 5456 and 5511), so
  each runs in a helper thread and is given up after its timeout: the producer is then
  dropped (kept alive, never destroyed under the waiting thread) and a ``TransientError``
  restarts the flow with a fresh one, which fences the dropped one's transaction.
- Consumer: ``isolation.level=read_committed`` (librdkafka's default, set explicitly:
  records of open or aborted transactions are never returned), manual commits only,
  ``auto.offset.reset=earliest``, the
  ``cooperative-sticky`` assignor: a rebalance only moves the partitions that
  change owner, the others keep flowing. ``on_revoke`` runs (inside ``poll``)
  for exactly the partitions about to move, before the new owner can get them,
  and for every owned partition on ``close``. Lost partitions (the session
  timed out) also go through ``on_revoke`` (confluent-kafka's default).
- Seeking from ``on_assign``: librdkafka only assigns a partition after the
  rebalance callback returns, so a plain ``seek`` there would fail. While the
  user's ``on_assign`` runs, ``seek`` records the offsets and the callback then
  calls ``incremental_assign`` with them -- the fetcher starts at the sought
  offset and never reads from the committed one first.
- Bounded memory: the pre-fetch queue is capped by ``queued.max.messages.kbytes``
  and ``fetch.max.bytes``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    Message,
)
from confluent_kafka import (
    Consumer as _Consumer,
)
from confluent_kafka import (
    Producer as _Producer,
)
from confluent_kafka import (
    TopicPartition as _TP,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from tidelake.broker.base import (
    Broker,
    Consumer,
    MessageBatch,
    Producer,
    RebalanceCallback,
    TopicPartition,
    TransactionalProducer,
)
from tidelake.errors import ConfigError, ConnectorError, Fenced, TransientError

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    # the broker refuses batches above message.max.bytes (1 MiB by default)
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,
    "compression.type": "lz4",
    "partitioner": "murmur2_random",
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 262_144,
    "delivery.report.only.error": True,
}

TRANSACTIONAL_DEFAULTS: dict[str, Any] = {
    "transaction.timeout.ms": 10_000,
}

CONSUMER_DEFAULTS: dict[str, Any] = {
    "isolation.level": "read_committed",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    "queued.max.messages.kbytes": 32_768,
    "fetch.max.bytes": 16 * 1024 * 1024,
    "max.partition.fetch.bytes": 4 * 1024 * 1024,
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 1_000,
}

_TIMEOUT = 30.0
_INTERNAL = ("__",)
_LEADER_MOVING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.UNKNOWN_LEADER_EPOCH,
    KafkaError.FENCED_LEADER_EPOCH,
}
_DOWN = {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN}
_COMES_BACK = _DOWN | {
    KafkaError._MSG_TIMED_OUT,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
}
"""Codes a broker restart causes: a later attempt will not see them."""
_GROUP_MOVED = {
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
}
"""Group offsets sent with a transaction refused: the group moved on without this member."""

_GRACE = 5.0
"""Seconds a transactional call may overrun its own timeout before it is given up."""
_STUCK: list[_Producer] = []
"""Producers a call never returned from: kept, since destroying one under the thread still
inside it would crash the process."""


class _Stuck(Exception):
    """A librdkafka call did not return within its timeout plus ``_GRACE``."""


def _bounded(fn: Callable[[float], None], timeout: float) -> None:
    """``fn(timeout)`` in a daemon thread; raise its error, or :class:`_Stuck` once
    ``timeout + _GRACE`` passed without an answer."""
    done = threading.Event()
    failed: list[BaseException] = []

    def call() -> None:
        try:
            fn(timeout)
        except BaseException as e:
            failed.append(e)
        finally:
            done.set()

    threading.Thread(target=call, name="kafka-transaction-call", daemon=True).start()
    if not done.wait(timeout + _GRACE):
        raise _Stuck
    if failed:
        raise failed[0]


def parse_url(url: str) -> dict[str, Any]:
    """``kafka://h:p[,h:p][?k=v]`` -> librdkafka config shared by every client."""
    parts = urlsplit(url)
    if parts.scheme != "kafka" or not parts.netloc:
        raise ConfigError(
            f"broker url {url!r} is not a Kafka url: use 'kafka://host:port[,host:port]'"
        )
    conf: dict[str, Any] = dict(parse_qsl(parts.query))
    conf["bootstrap.servers"] = parts.netloc
    return conf


def kafka_transient(err: KafkaError) -> bool:
    """A librdkafka error that a later attempt may not see: retriable, abortable, or the
    broker unreachable (a restart)."""
    if err.code() in _COMES_BACK:
        return True
    return not err.fatal() and bool(err.retriable() or err.txn_requires_abort())


def _tp(tp: TopicPartition, offset: int = OFFSET_INVALID) -> _TP:
    return _TP(tp[0], tp[1], offset)


def _unreachable(what: str, servers: str, err: object) -> ConnectorError:
    code = err.args[0].code() if isinstance(err, KafkaException) and err.args else None
    down = not isinstance(err, KafkaException) or code in _DOWN
    hint = " Is it running? `tidelake infra up kafka` starts a local one." if down else ""
    cls = TransientError if down else ConnectorError
    return cls(f"Kafka at {servers} failed to {what}: {err}.{hint}")


class KafkaBroker(Broker):
    """A Kafka cluster reached through confluent-kafka."""

    def __init__(self, url: str, **config: Any) -> None:
        self.url = url
        self.config = {**parse_url(url), **config}
        self.servers = str(self.config["bootstrap.servers"])
        self._admin: AdminClient | None = None

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            # a metadata request for one topic must not create it (librdkafka's producer-side
            # default, which the admin client shares)
            conf: dict[str, Any] = {
                "allow.auto.create.topics": False,
                **self.config,
                "logger": log,
                "error_cb": lambda e: log.debug("kafka: %s", e),
            }
            self._admin = AdminClient(conf)
        return self._admin

    # -- topics -----------------------------------------------------------------------------

    def _metadata(self, topic: str | None = None, timeout: float = 10.0) -> Any:
        try:
            return self.admin.list_topics(topic=topic, timeout=timeout)
        except KafkaException as e:
            raise _unreachable("answer a metadata request", self.servers, e) from e

    def create_topic(
        self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> None:
        """Create ``name`` if missing and wait until every partition has a leader."""
        self._create({name: partitions}, config)

    def ensure_topics(self, names: Iterable[str]) -> None:
        """Create the missing ones among ``names`` with the broker's default partition count."""
        md = self._metadata()
        missing = [n for n in names if n not in md.topics or md.topics[n].error is not None]
        if missing:
            self._create(dict.fromkeys(missing, -1), None)

    def _create(self, wanted: dict[str, int], topic_config: Mapping[str, str] | None) -> None:
        config = {k: str(v) for k, v in (topic_config or {}).items()}
        new = [NewTopic(n, num_partitions=p, config=config) for n, p in wanted.items()]
        need = {name: max(n, 1) for name, n in wanted.items()}
        for name, fut in self.admin.create_topics(new, operation_timeout=_TIMEOUT).items():
            try:
                fut.result(timeout=_TIMEOUT)
            except KafkaException as e:
                if e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    need[name] = 1  # left as it is, whatever its partition count
                else:
                    raise ConnectorError(f"could not create Kafka topic {name!r}: {e}") from e
            except TimeoutError as e:
                raise _unreachable(f"create topic {name!r}", self.servers, e) from e
        deadline = time.monotonic() + _TIMEOUT
        for name, n in need.items():
            while True:
                t = self._metadata(name).topics.get(name)
                ready = (
                    t is not None
                    and t.error is None
                    and len(t.partitions) >= n
                    and all(p.leader >= 0 and p.error is None for p in t.partitions.values())
                )
                if ready:
                    self._list_offsets(name, list(t.partitions))  # every leader answers
                    break
                if time.monotonic() > deadline:
                    raise ConnectorError(f"Kafka topic {name!r} not usable after {_TIMEOUT}s")
                time.sleep(0.05)

    def topics(self) -> dict[str, int]:
        md = self._metadata()
        return {
            name: len(t.partitions)
            for name, t in sorted(md.topics.items())
            if t.error is None and not name.startswith(_INTERNAL)
        }

    def end_offsets(self, topic: str) -> dict[int, int]:
        t = self._metadata().topics.get(topic)
        if t is None or t.error is not None:
            return {}
        return self._list_offsets(topic, list(t.partitions))

    def _list_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        """High watermarks; retries while a new partition's leader is still being elected."""
        deadline = time.monotonic() + _TIMEOUT
        while True:
            req = {_TP(topic, p): OffsetSpec.latest() for p in partitions}
            out: dict[int, int] = {}
            try:
                for tp, fut in self.admin.list_offsets(req, request_timeout=_TIMEOUT).items():
                    out[tp.partition] = fut.result(timeout=_TIMEOUT).offset
                return dict(sorted(out.items()))
            except KafkaException as e:
                err = e.args[0]
                retry = err.retriable() or err.code() in _LEADER_MOVING
                if not retry or time.monotonic() > deadline:
                    raise _unreachable(f"list offsets of {topic!r}", self.servers, e) from e
            except TimeoutError as e:
                raise _unreachable(f"list offsets of {topic!r}", self.servers, e) from e
            time.sleep(0.1)

    def close(self) -> None:
        self._admin = None

    # -- clients ----------------------------------------------------------------------------

    def producer(self) -> KafkaProducer:
        return KafkaProducer(self)

    def transactional_producer(self, transactional_id: str) -> KafkaTransactionalProducer:
        return KafkaTransactionalProducer(self, transactional_id)

    def latest(
        self, topic: str, keys: Sequence[bytes], timeout: float = 120.0
    ) -> dict[bytes, bytes]:
        """Read ``topic`` from its start to the high watermark seen now, read_committed.

        A read_committed consumer stops at the last stable offset: records after the first
        still-open transaction (another producer's, or a killed one's not yet timed out) are
        held back, though committed ones may follow. So the end is the high watermark taken
        *before* reading, and it counts as reached only once the position (which moves past
        transaction markers and aborted records) gets there.
        """
        t = self._metadata(topic).topics.get(topic)
        if t is None or t.error is not None:
            return {}
        ends = {p: o for p, o in self._list_offsets(topic, list(t.partitions)).items() if o > 0}
        if not ends:
            return {}
        c = _Consumer(
            {
                **CONSUMER_DEFAULTS,
                **self.config,
                "isolation.level": "read_committed",
                "group.id": f"tidelake-latest-{uuid.uuid4().hex}",  # never joined nor committed
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 10,  # the broker must not hold a fetch at the end
                "error_cb": lambda e: log.debug("kafka latest: %s", e),
                "logger": log,
            }
        )
        wanted, found = set(keys), {}  # the last value of each key (one partition holds it)
        try:
            tps = [_TP(topic, p, OFFSET_BEGINNING) for p in sorted(ends)]
            c.assign(tps)
            deadline = time.monotonic() + timeout
            left = dict(ends)
            while left:
                for m in c.consume(10_000, 0.05):
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise ConnectorError(f"Kafka read of {topic!r} failed: {err.str()}")
                    if m.key() in wanted:
                        found[m.key()] = m.value()
                for tp in c.position([_TP(topic, p) for p in left]):
                    if tp.offset >= left[tp.partition]:
                        del left[tp.partition]
                if left and time.monotonic() > deadline:
                    raise ConnectorError(
                        f"Kafka topic {topic!r} not readable to its end within {timeout:.0f}s "
                        f"under read_committed (partitions {sorted(left)}): a transaction of "
                        "another producer stays open; it ends when that producer commits, "
                        "restarts, or its transaction.timeout.ms passes"
                    )
        except KafkaException as e:
            raise _unreachable(f"read topic {topic!r}", self.servers, e) from e
        finally:
            c.close()
        return found  # type: ignore[return-value]

    def consumer(
        self,
        group: str,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> KafkaConsumer:
        return KafkaConsumer(self, group, topics, on_assign, on_revoke)


class KafkaProducer(Producer):
    """Buffers in librdkafka; ``flush`` is the durability point."""

    def __init__(self, broker: KafkaBroker, **config: Any) -> None:
        self.broker = broker
        self._errors: list[str] = []
        self._lasting = False  # an error among _errors that a retry cannot fix
        self._known: set[str] = set()
        self._p = _Producer(
            {
                **PRODUCER_DEFAULTS,
                **broker.config,
                **config,
                "on_delivery": self._on_delivery,
                "error_cb": self._on_error,
                "logger": log,
            }
        )

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")
            self._lasting = self._lasting or not kafka_transient(err)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._errors.append(f"fatal producer error: {err.str()}")
            self._lasting = True
        else:
            log.debug("kafka producer: %s", err)

    def _raise_errors(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            cls = ConnectorError if self._lasting else TransientError
            self._lasting = False
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise cls(f"Kafka delivery failed: {errors[0]}{more}")

    def produce(
        self, topic: str, values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None
    ) -> None:
        if not values:
            return
        self._raise_errors()
        if topic not in self._known:
            self.broker.ensure_topics([topic])
            self._known.add(topic)
        produce, poll = self._p.produce, self._p.poll
        try:
            if keys is None:
                for v in values:
                    try:
                        produce(topic, v)
                    except BufferError:
                        while True:
                            poll(0.05)
                            try:
                                produce(topic, v)
                                break
                            except BufferError:
                                continue
            else:
                if len(keys) != len(values):
                    raise ValueError("keys and values must have the same length")
                for k, v in zip(keys, values, strict=True):
                    try:
                        produce(topic, v, k)
                    except BufferError:
                        while True:
                            poll(0.05)
                            try:
                                produce(topic, v, k)
                                break
                            except BufferError:
                                continue
        except KafkaException as e:
            raise ConnectorError(f"Kafka produce to {topic!r} failed: {e}") from e
        poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        left = self._p.flush(timeout)
        if left:
            self._raise_errors()
            raise TransientError(
                f"{left} records not delivered to Kafka at {self.broker.servers} within {timeout}s"
            )
        self._raise_errors()

    def close(self) -> None:
        self.flush()


class KafkaTransactionalProducer(TransactionalProducer):
    """A ``transactional.id`` producer; ``commit`` is the durability and visibility point."""

    def __init__(self, broker: KafkaBroker, transactional_id: str, **config: Any) -> None:
        self.broker = broker
        self.transactional_id = transactional_id
        conf = {**TRANSACTIONAL_DEFAULTS, **broker.config, **config}
        conf["transactional.id"] = transactional_id
        self._conf = conf
        self._open = False
        self._stuck = False  # a call never returned: the client is dropped (``_STUCK``)
        self._began = time.monotonic()  # when the open transaction began
        self._txn_timeout = int(conf["transaction.timeout.ms"]) / 1000
        self._timeout = max(_TIMEOUT, self._txn_timeout + 5)
        self._init()

    def _init(self) -> None:
        """A fresh client; initializing it aborts whatever transaction this id left open."""
        self._inner = KafkaProducer(self.broker, **self._conf)
        self._p = self._inner._p
        self._call("initialize transactions (fencing older producers)", self._p.init_transactions)

    @staticmethod
    def _fenced(err: KafkaError) -> bool:
        return err.code() in (KafkaError._FENCED, KafkaError.INVALID_PRODUCER_EPOCH) or (
            err.code() == getattr(KafkaError, "PRODUCER_FENCED", None)
        )

    def _error(self, what: str, err: KafkaError) -> ConnectorError:
        tid = self.transactional_id
        if self._fenced(err) and time.monotonic() - self._began > self._txn_timeout:
            return TransientError(  # the coordinator aborted it, bumping the epoch (KIP-588)
                f"Kafka producer {tid!r}: the transaction outlived transaction.timeout.ms "
                f"({self._txn_timeout:.0f}s; was the broker away?) and the coordinator aborted "
                f"it: nothing of it was committed ({err.str()})"
            )
        if self._fenced(err):
            return ConnectorError(
                f"Kafka producer {tid!r} was fenced: a newer producer with the same "
                "transactional id took over (is this flow running twice?); "
                f"its transaction was not committed ({err.str()})"
            )
        kind = "fatal error" if err.fatal() else "error"
        cls = TransientError if kafka_transient(err) else ConnectorError
        return cls(
            f"Kafka producer {tid!r} at {self.broker.servers} failed to {what}: {kind}: {err.str()}"
        )

    def _call(self, what: str, fn: Callable[[float], None]) -> None:
        """Run a transactional call, retrying retriable errors until the timeout."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                self._bounded(what, fn, max(1.0, deadline - time.monotonic()))
                return
            except KafkaException as e:
                err: KafkaError = e.args[0]
                if err.code() in _GROUP_MOVED and not err.fatal():
                    self._abort_quietly()
                    raise Fenced(
                        f"Kafka producer {self.transactional_id!r}: the consumer group moved "
                        f"on ({err.str()}): its partitions may be another member's now; "
                        "nothing of the transaction was committed"
                    ) from e
                if err.retriable() and not err.fatal() and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                if err.txn_requires_abort() and self._open:
                    self._abort_quietly()
                elif err.fatal():
                    self._open = False  # nothing more can be done with this producer
                raise self._error(what, err) from e

    def _bounded(self, what: str, fn: Callable[[float], None], timeout: float) -> None:
        if self._stuck:
            raise ConnectorError(f"producer {self.transactional_id!r} was dropped")
        try:
            _bounded(fn, timeout)
        except _Stuck:
            self._stuck, self._open = True, False
            _STUCK.append(self._p)
            raise TransientError(
                f"Kafka producer {self.transactional_id!r} at {self.broker.servers}: "
                f"librdkafka did not return from the call to {what} within "
                f"{timeout + _GRACE:.0f}s (it can wait for ever for a group coordinator after "
                "a broker restart): the producer is dropped, nothing of its transaction is "
                "committed, and a fresh one fences it"
            ) from None

    def _abort_quietly(self) -> None:
        self._open = False
        try:
            self._bounded("abort a transaction", self._p.abort_transaction, self._timeout)
        except (KafkaException, ConnectorError) as e:
            log.debug("kafka: abort of %s failed: %s", self.transactional_id, e)

    def begin(self) -> None:
        try:
            self._p.begin_transaction()
        except KafkaException as e:
            raise self._error("begin a transaction", e.args[0]) from e
        self._open, self._began = True, time.monotonic()
        self._inner._errors.clear()

    def produce(
        self, topic: str, values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None
    ) -> None:
        if not self._open:
            raise ConnectorError(f"producer {self.transactional_id!r}: produce outside begin()")
        try:
            self._inner.produce(topic, values, keys)
        except ConnectorError:
            self._abort_quietly()
            raise

    def send_offsets(self, offsets: dict[TopicPartition, int], consumer: Consumer) -> None:
        if not self._open:
            raise ConnectorError(f"producer {self.transactional_id!r}: offsets outside begin()")
        if not isinstance(consumer, KafkaConsumer):
            raise ConnectorError("send_offsets: the consumer must read the same Kafka cluster")
        tps = [_tp(tp, o) for tp, o in offsets.items()]
        group = consumer._c.consumer_group_metadata()
        self._call(
            "commit group offsets with the transaction",
            lambda timeout: self._p.send_offsets_to_transaction(tps, group, timeout),
        )

    def commit(self) -> None:
        if not self._open:
            raise ConnectorError(f"producer {self.transactional_id!r}: commit outside begin()")
        self._call("commit a transaction", self._p.commit_transaction)
        self._open = False
        if self._inner._errors:  # delivery failed yet commit succeeded: cannot happen, be loud
            self._inner._raise_errors()

    def abort(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            # deliver first: an abort racing the partitions' registration in the transaction
            # can be refused with a fatal INVALID_TXN_STATE (librdkafka issue 4849)
            self._p.flush(self._timeout)
            self._bounded("abort a transaction", self._p.abort_transaction, self._timeout)
        except KafkaException as e:
            err: KafkaError = e.args[0]
            if not err.fatal() or self._fenced(err):
                raise self._error("abort a transaction", err) from e
            log.warning("kafka: %s: abort refused (%s), re-init", self.transactional_id, err)
            self._init()  # the coordinator aborts the open transaction for the new epoch

    def close(self) -> None:
        if self._open:
            self._abort_quietly()


class KafkaConsumer(Consumer):
    """A consumer-group member; rebalance callbacks run inside ``poll`` and ``close``."""

    def __init__(
        self,
        broker: KafkaBroker,
        group: str,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        **config: Any,
    ) -> None:
        self.broker = broker
        self.group = group
        self.topics = list(topics)
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self._owned: set[TopicPartition] = set()
        self._seeks: dict[TopicPartition, int | None] | None = None  # set while on_assign runs
        self._closed = False
        self._revoked_in_poll = False
        self._callback_error: BaseException | None = None
        self._fatal: KafkaError | None = None
        broker.ensure_topics(self.topics)
        self._c = _Consumer(
            {
                **CONSUMER_DEFAULTS,
                **broker.config,
                **config,
                "group.id": group,
                "error_cb": self._on_error,
                "on_commit": self._on_commit,
                "logger": log,
            }
        )
        conf = {**CONSUMER_DEFAULTS, **broker.config, **config}
        self._cooperative = (
            "cooperative" in str(conf.get("partition.assignment.strategy", ""))
            or str(conf.get("group.protocol", "classic")) == "consumer"
        )
        self._c.subscribe(
            self.topics,
            on_assign=self._assigned,
            on_revoke=self._revoked,
        )

    # -- rebalance callbacks (run inside consume/close) -------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
        else:
            log.debug("kafka consumer %s: %s", self.group, err)

    def _on_commit(self, err: KafkaError | None, partitions: list[_TP]) -> None:
        failed = [p for p in partitions if p.error is not None]
        if err is not None or failed:
            log.warning("kafka consumer %s: commit failed: %s", self.group, err or failed[0].error)

    def _assigned(self, consumer: _Consumer, partitions: list[_TP]) -> None:
        added = sorted((p.topic, p.partition) for p in partitions)
        self._owned.update(added)
        seeks: dict[TopicPartition, int | None] = dict.fromkeys(added)
        self._seeks = seeks
        try:
            if added and self.on_assign is not None:
                self.on_assign(list(added))
        except BaseException as e:  # re-raised from poll once librdkafka's state is consistent
            self._callback_error = e
        finally:
            self._seeks = None
        tps = [_tp(tp, OFFSET_INVALID if (o := seeks[tp]) is None else o) for tp in added]
        if self._cooperative:
            consumer.incremental_assign(tps)
        else:
            consumer.assign(tps)

    def _revoked(self, consumer: _Consumer, partitions: list[_TP]) -> None:
        revoked = sorted((p.topic, p.partition) for p in partitions)
        self._revoked_in_poll = True
        mine = [tp for tp in revoked if tp in self._owned]
        try:
            if mine and self.on_revoke is not None:
                self.on_revoke(mine)
        except BaseException as e:
            self._callback_error = e
        finally:
            self._owned.difference_update(revoked)
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()

    def _raise_pending(self) -> None:
        if self._callback_error is not None:
            err, self._callback_error = self._callback_error, None
            raise err
        if self._fatal is not None:
            raise ConnectorError(f"Kafka consumer of group {self.group!r} failed: {self._fatal}")

    # -- contract ---------------------------------------------------------------------------

    def poll(self, max_records: int, timeout: float) -> MessageBatch:
        """Return what is buffered now; else wait up to ``timeout`` for the first record.

        ``consume(n, timeout)`` alone would wait the whole ``timeout`` for ``n`` records.
        """
        self._raise_pending()
        n = max(1, min(max_records, 1_000_000))
        consume = self._c.consume
        self._revoked_in_poll = False
        try:
            msgs = consume(n, 0)
            if not msgs and timeout > 0:
                msgs = consume(1, timeout)
                if msgs and n > 1:
                    msgs += consume(n - 1, 0)
        except KafkaException as e:
            raise ConnectorError(f"Kafka consumer of group {self.group!r} failed: {e}") from e
        self._raise_pending()
        if any(m.error() is not None for m in msgs):
            msgs = self._check_errors(msgs)
        if self._revoked_in_poll:
            # records fetched before a revocation served in this same call: the new owner
            # reads them again from the offsets on_revoke checkpointed, so drop them here
            owned = self._owned
            msgs = [m for m in msgs if (m.topic(), m.partition()) in owned]
        one_topic = len(self.topics) == 1
        return MessageBatch(
            self.topics * len(msgs) if one_topic else [m.topic() for m in msgs],  # type: ignore[misc]
            [m.partition() for m in msgs],  # type: ignore[misc]
            [m.offset() for m in msgs],  # type: ignore[misc]
            [m.timestamp()[1] for m in msgs],
            [m.key() for m in msgs],  # type: ignore[misc]
            [m.value() for m in msgs],  # type: ignore[misc]
        )

    def _check_errors(self, msgs: list[Message]) -> list[Message]:
        ok = []
        for m in msgs:
            err = m.error()
            if err is None:
                ok.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                where = f"{m.topic()}[{m.partition()}]" if m.topic() else self.group
                cls = TransientError if kafka_transient(err) else ConnectorError
                raise cls(f"Kafka consumer error on {where}: {err.str()}")
        return ok

    def commit(self, offsets: dict[TopicPartition, int], wait: bool = True) -> None:
        if not offsets:  # an empty commit would commit the consumed positions instead
            return
        tps = [_tp(tp, o) for tp, o in offsets.items()]
        try:
            if not wait:  # a synchronous commit waits for its reply without a timeout: while
                self._c.commit(offsets=tps, asynchronous=True)  # the coordinator is away, for ever
                return
            result = self._c.commit(offsets=tps, asynchronous=False)
        except KafkaException as e:
            raise ConnectorError(f"Kafka commit of group {self.group!r} failed: {e}") from e
        failed = [tp for tp in result if tp.error is not None]
        if failed:
            raise ConnectorError(
                f"Kafka commit of group {self.group!r} failed for "
                + ", ".join(f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in failed)
            )

    def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        try:
            result = self._c.committed([_tp(tp) for tp in partitions], timeout=_TIMEOUT)
        except KafkaException as e:
            err: KafkaError = e.args[0]
            cls = TransientError if kafka_transient(err) else ConnectorError
            raise cls(f"Kafka: reading the offsets of group {self.group!r} failed: {e}") from e
        return {(tp.topic, tp.partition): tp.offset for tp in result if tp.offset >= 0}

    def seek(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, o in offsets.items():
            if self._seeks is not None and tp in self._seeks:
                self._seeks[tp] = o  # applied by incremental_assign when on_assign returns
            elif tp in self._owned:
                try:
                    self._c.seek(_tp(tp, o))
                except KafkaException as e:
                    raise ConnectorError(f"Kafka seek of {tp} to {o} failed: {e}") from e

    def assignment(self) -> list[TopicPartition]:
        return sorted(self._owned)

    def lag(self) -> int:
        tps = [_tp(tp) for tp in sorted(self._owned)]
        if not tps:
            return 0
        try:
            pos = {(p.topic, p.partition): p.offset for p in self._c.position(tps)}
            unknown = [_tp(tp) for tp, o in pos.items() if o < 0]
            if unknown:
                for p in self._c.committed(unknown, timeout=10):
                    pos[(p.topic, p.partition)] = p.offset
            total = 0
            for tp, o in pos.items():
                low, high = self._c.get_watermark_offsets(_tp(tp), timeout=10)
                total += max(0, high - (o if o >= 0 else low))
            return total
        except KafkaException as e:
            raise ConnectorError(f"Kafka lag of group {self.group!r} failed: {e}") from e

    def close(self) -> None:
        """Hand every owned partition to ``on_revoke`` (commits still work there), then leave."""
        if self._closed:
            return
        owned = sorted(self._owned)
        try:
            if owned and self.on_revoke is not None:
                self.on_revoke(owned)
        finally:
            self._owned.clear()
            self._closed = True
            self._c.close()
