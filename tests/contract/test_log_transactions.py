"""Transactions and compacted topics of the log contract, checked identically on every backend.

What the topic sink's exactly-once rests on: records produced in a transaction show up
all at once or never, a newer producer with the same transactional id fences the older
one, group offsets sent with a transaction commit with it and only while the consumer
still owns their partitions (KIP-447), and ``latest`` reads the last committed value of a
key in a compacted topic.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest
from test_log_contract import Names, Rec, consume, quiet

from tidelake.broker import Broker, Consumer
from tidelake.broker.embedded import EmbeddedBroker, EmbeddedConsumer
from tidelake.errors import ConnectorError, Fenced

COMPACT = {"cleanup.policy": "compact"}


def values_by_partition(records: list[Rec]) -> dict[int, list[bytes | None]]:
    out: dict[int, list[bytes | None]] = defaultdict(list)
    for _, p, _, _, v in records:
        out[p].append(v)
    return dict(out)


def test_committed_records_visible_aborted_never(broker: Broker, name: Names) -> None:
    topic = name("t")
    broker.create_topic(topic, 3)
    c = broker.consumer(name("g"), [topic])
    tx = broker.transactional_producer(name("tx"))
    keys = [f"k{i % 7}".encode() for i in range(300)]

    tx.begin()
    tx.produce(topic, [b"a%d" % i for i in range(300)], keys)
    assert quiet(c, 1.0) == [], "nothing of an open transaction is visible"
    tx.commit()
    tx.begin()
    tx.produce(topic, [b"x%d" % i for i in range(300)], keys)
    tx.abort()
    tx.begin()
    tx.produce(topic, [b"c%d" % i for i in range(300)], keys)
    tx.commit()
    tx.close()

    got = consume(c, 600)
    assert quiet(c, 1.5) == []
    c.close()
    values = [v for *_, v in got]
    assert sorted(values) == sorted(
        [b"a%d" % i for i in range(300)] + [b"c%d" % i for i in range(300)]
    )
    for vs in values_by_partition(got).values():  # commit order kept within a partition
        firsts = [v[:1] for v in vs if v]
        assert firsts == sorted(firsts), "a partition serves the first transaction first"
    for _, p, offset, _, _ in got:
        assert 0 <= offset < broker.end_offsets(topic)[p]


def test_one_transaction_spans_topics(broker: Broker, name: Names) -> None:
    t1, t2 = name("one"), name("two")
    for t in (t1, t2):
        broker.create_topic(t, 2)
    c = broker.consumer(name("g"), [t1, t2])
    tx = broker.transactional_producer(name("tx"))
    tx.begin()
    tx.produce(t1, [b"1-%d" % i for i in range(50)])
    tx.produce(t2, [b"2-%d" % i for i in range(70)], [b"k%d" % i for i in range(70)])
    assert quiet(c, 1.0) == []
    tx.commit()
    tx.close()
    got = consume(c, 120)
    c.close()
    assert sorted(t for t, *_ in got) == [t1] * 50 + [t2] * 70


def test_newer_producer_fences_older_one(broker: Broker, name: Names) -> None:
    topic, tid = name("t"), name("tx")
    broker.create_topic(topic, 2)
    c = broker.consumer(name("g"), [topic])
    old = broker.transactional_producer(tid)
    old.begin()
    old.produce(topic, [b"zombie-committed"])
    old.commit()
    old.begin()
    old.produce(topic, [b"zombie"] * 100)

    new = broker.transactional_producer(tid)  # fences ``old`` and aborts its open transaction
    with pytest.raises(ConnectorError, match="fenced"):
        old.commit()
    old.close()
    new.begin()
    new.produce(topic, [b"new"] * 10)
    new.commit()
    new.close()

    got = consume(c, 11)
    assert quiet(c, 1.5) == []
    c.close()
    assert sorted(v for *_, v in got) == [b"new"] * 10 + [b"zombie-committed"]


def test_fenced_producer_cannot_commit_even_without_producing_first(
    broker: Broker, name: Names
) -> None:
    topic, tid = name("t"), name("tx")
    broker.create_topic(topic)
    old = broker.transactional_producer(tid)
    new = broker.transactional_producer(tid)
    with pytest.raises(ConnectorError, match="fenced"):
        old.begin()
        old.produce(topic, [b"zombie"])
        old.commit()
    old.close()
    new.begin()
    new.produce(topic, [b"ok"])
    new.commit()
    new.close()
    c = broker.consumer(name("g"), [topic])
    assert [v for *_, v in consume(c, 1)] == [b"ok"]
    assert quiet(c, 1.0) == []
    c.close()


def _member(broker: Broker, group: str, topic: str) -> Consumer:
    """A group member that the group gives up on after about 6 s without a poll."""
    if isinstance(broker, EmbeddedBroker):
        return EmbeddedConsumer(broker, group, [topic], session_timeout=4.0)
    from tidelake.broker.kafka import KafkaBroker, KafkaConsumer

    assert isinstance(broker, KafkaBroker)
    quick = {"session.timeout.ms": 6000, "max.poll.interval.ms": 6000}
    return KafkaConsumer(broker, group, [topic], **quick)


def _owns(c: Consumer, tp: tuple[str, int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while tp not in c.assignment():
        assert time.monotonic() < deadline, f"{tp} never assigned"
        c.poll(100, 0.2)


def test_group_offsets_commit_with_the_transaction_while_the_member_owns_them(
    broker: Broker, name: Names
) -> None:
    topic, out, group = name("in"), name("out"), name("g")
    broker.create_topic(topic, 1)
    broker.create_topic(out, 1)
    tp = (topic, 0)
    zombie = _member(broker, group, topic)
    _owns(zombie, tp)
    tx = broker.transactional_producer(name("tx"))
    tx.begin()
    tx.produce(out, [b"landed"])
    tx.send_offsets({tp: 5}, zombie)
    tx.commit()
    assert zombie.committed([tp]) == {tp: 5}
    tx.begin()
    tx.produce(out, [b"aborted"])
    tx.send_offsets({tp: 9}, zombie)
    tx.abort()
    assert zombie.committed([tp]) == {tp: 5}, "offsets of an aborted transaction never count"

    # the zombie stops polling (paused, cut off); the group gives its partition to another
    other = _member(broker, group, topic)
    _owns(other, tp)
    tx.begin()
    tx.produce(out, [b"stale"])
    with pytest.raises(Fenced, match="group"):
        tx.send_offsets({tp: 7}, zombie)
        tx.commit()
    tx.abort()
    assert other.committed([tp]) == {tp: 5}
    reader = broker.consumer(name("reader"), [out])
    assert [v for *_, v in consume(reader, 1)] == [b"landed"]
    assert quiet(reader, 1.5) == []
    for c in (reader, other, zombie, tx):
        c.close()


def test_compacted_topic_latest_value_per_key(broker: Broker, name: Names) -> None:
    topic = name("ckpt")
    broker.create_topic(topic, 1, COMPACT)
    assert broker.latest(topic, [b"a"]) == {}
    assert broker.latest(name("missing"), [b"a"]) == {}
    tx = broker.transactional_producer(name("tx"))
    for i in range(20):
        tx.begin()
        tx.produce(topic, [b"a%d" % i, b"b%d" % i], [b"a", b"b"])
        tx.commit()
    tx.begin()
    tx.produce(topic, [b"a-aborted"], [b"a"])
    tx.abort()
    tx.begin()
    tx.produce(topic, [b"b-last"], [b"b"])
    tx.commit()
    tx.begin()
    tx.produce(topic, [b"b-aborted"], [b"b"])
    tx.abort()
    tx.close()
    assert broker.latest(topic, [b"a", b"b", b"c"]) == {b"a": b"a19", b"b": b"b-last"}
    # plain producers write compacted topics too; the last record of a key wins
    p = broker.producer()
    p.produce(topic, [b"a-plain", b"c1", b"c2"], [b"a", b"c", b"c"])
    p.flush()
    p.close()
    assert broker.latest(topic, [b"a", b"c"]) == {b"a": b"a-plain", b"c": b"c2"}


def test_latest_waits_for_open_transactions_of_others(broker: Broker, name: Names) -> None:
    """A read_committed reader stops before another producer's open transaction, though a
    newer committed value of our key sits behind it: ``latest`` must wait for it."""
    topic = name("ckpt")
    broker.create_topic(topic, 1, COMPACT)
    mine = broker.transactional_producer(name("mine"))
    other = broker.transactional_producer(name("other"))
    mine.begin()
    mine.produce(topic, [b"v1"], [b"me"])
    mine.commit()
    other.begin()
    other.produce(topic, [b"o1"], [b"other"])
    time.sleep(0.5)  # let Kafka's producer send it: the open transaction now holds the LSO
    mine.begin()
    mine.produce(topic, [b"v2"], [b"me"])
    mine.commit()
    closer = threading.Timer(2.0, other.commit)
    closer.start()
    try:
        assert broker.latest(topic, [b"me"]) == {b"me": b"v2"}
    finally:
        closer.join()
    assert broker.latest(topic, [b"other"]) == {b"other": b"o1"}
    mine.close()
    other.close()


def test_transactions_leave_plain_producers_working(broker: Broker, name: Names) -> None:
    topic = name("t")
    broker.create_topic(topic, 2)
    tx = broker.transactional_producer(name("tx"))
    tx.begin()
    tx.produce(topic, [b"tx"] * 10)
    p = broker.producer()
    p.produce(topic, [b"plain"] * 10)
    p.flush()
    p.close()
    tx.commit()
    tx.close()
    c = broker.consumer(name("g"), [topic])
    got = consume(c, 20)
    c.close()
    assert sorted(v for *_, v in got) == [b"plain"] * 10 + [b"tx"] * 10


# -- embedded specifics ----------------------------------------------------------------------


def test_embedded_transactions_keep_offsets_dense_and_compact_eagerly(tmp_path: object) -> None:
    broker = EmbeddedBroker(f"{tmp_path}/log.db")
    broker.create_topic("data", 1)
    broker.create_topic("ckpt", 1, COMPACT)
    tx = broker.transactional_producer("t")
    for i in range(5):
        tx.begin()
        tx.produce("data", [b"d"] * 10)
        tx.produce("ckpt", [b"%d" % i], [b"k"])
        if i % 2:
            tx.abort()
        else:
            tx.commit()
    tx.close()
    assert broker.end_offsets("data") == {0: 30}
    conn = broker.connection()
    rows = conn.execute("SELECT offset, key, value FROM messages WHERE topic = 'ckpt'").fetchall()
    conn.close()
    assert rows == [(2, b"k", b"4")], "one record per key, offsets never reused"
    with pytest.raises(ConnectorError, match="keyed"):
        p = broker.transactional_producer("t2")
        p.begin()
        p.produce("ckpt", [b"no key"])
        p.commit()


def test_embedded_retention_spares_compacted_topics(tmp_path: object) -> None:
    broker = EmbeddedBroker(f"{tmp_path}/log.db")
    broker.create_topic("ckpt", 1, {**COMPACT, "retention.ms": "1"})
    broker.create_topic("data", 1, {"retention.ms": "1"})
    p = broker.producer()
    p.produce("ckpt", [b"1", b"2"], [b"a", b"b"])
    p.produce("data", [b"1", b"2"])
    time.sleep(0.01)
    p._enforce_retention()
    p.close()
    assert broker.latest("ckpt", [b"a"]) == {b"a": b"1"}
    conn = broker.connection()
    left = conn.execute("SELECT count(*) FROM messages WHERE topic = 'data'").fetchone()[0]
    conn.close()
    assert left == 1, "retention still applies to plain topics (the last record stays)"


def test_embedded_fencing_across_processes_is_in_the_file(tmp_path: object) -> None:
    path = f"{tmp_path}/log.db"
    old = EmbeddedBroker(path).transactional_producer("t")
    EmbeddedBroker(path).transactional_producer("t").close()  # as another process would
    old.begin()
    old.produce("x", [b"1"])
    with pytest.raises(ConnectorError, match="fenced"):
        old.commit()
    old.close()


def test_embedded_log_of_an_older_version_gains_compaction(tmp_path: object) -> None:
    import sqlite3

    path = f"{tmp_path}/log.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL,"
        " retention_ms INTEGER NOT NULL)"
    )
    conn.execute("INSERT INTO topics VALUES ('old', 2, 1000)")
    conn.commit()
    conn.close()
    broker = EmbeddedBroker(path)
    assert broker.topics() == {"old": 2}
    broker.create_topic("ckpt", 1, COMPACT)
    p = broker.producer()
    p.produce("old", [b"1"])
    p.produce("ckpt", [b"1", b"2"], [b"k", b"k"])
    p.close()
    assert broker.latest("ckpt", [b"k"]) == {b"k": b"2"}


def test_kafka_consumers_read_committed() -> None:
    from tidelake.broker.kafka import CONSUMER_DEFAULTS

    assert CONSUMER_DEFAULTS["isolation.level"] == "read_committed"
