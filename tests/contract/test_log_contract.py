"""The log contract (tidelake.broker.base), checked identically on every backend.

Consumers join their group inside ``poll`` (Kafka needs a few polls to join), so
every wait below polls until a condition holds, keeping the records it got.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from tidelake.broker import Broker, Consumer, MessageBatch, TopicPartition
from tidelake.broker.embedded import EmbeddedBroker

Rec = tuple[str, int, int, bytes | None, bytes | None]  # topic, partition, offset, key, value
Names = Callable[[str], str]
WAIT = 60.0


def recs(batch: MessageBatch) -> list[Rec]:
    return list(
        zip(batch.topics, batch.partitions, batch.offsets, batch.keys, batch.values, strict=True)
    )


def poll_until(
    consumers: Sequence[Consumer],
    done: Callable[[list[list[Rec]]], bool],
    timeout: float = WAIT,
    max_records: int = 1000,
    on_batch: Callable[[int, MessageBatch], None] | None = None,
) -> list[list[Rec]]:
    """Poll every consumer in turn until ``done(records so far, per consumer)``."""
    got: list[list[Rec]] = [[] for _ in consumers]
    deadline = time.monotonic() + timeout
    while not done(got):
        if time.monotonic() > deadline:
            sizes = [len(g) for g in got]
            assigned = [c.assignment() for c in consumers]
            raise AssertionError(f"timed out: got {sizes} records, assignments {assigned}")
        for i, c in enumerate(consumers):
            batch = c.poll(max_records, 0.05)
            if on_batch is not None:
                on_batch(i, batch)
            got[i] += recs(batch)
    return got


def consume(c: Consumer, n: int, timeout: float = WAIT, max_records: int = 1000) -> list[Rec]:
    """Exactly ``n`` records (fails on fewer; more would show up in the caller's checks)."""
    return poll_until([c], lambda g: len(g[0]) >= n, timeout, max_records)[0]


def quiet(c: Consumer, seconds: float = 1.0) -> list[Rec]:
    """Whatever else arrives within ``seconds`` (expected: nothing)."""
    out: list[Rec] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out += recs(c.poll(1000, 0.1))
    return out


def produce(broker: Broker, topic: str, values: list, keys: list | None = None) -> None:
    p = broker.producer()
    for i in range(0, len(values), 1000):
        p.produce(topic, values[i : i + 1000], None if keys is None else keys[i : i + 1000])
    p.flush()
    p.close()


def all_partitions(topic: str, n: int) -> list[TopicPartition]:
    return [(topic, p) for p in range(n)]


# -- records ---------------------------------------------------------------------------------


def test_roundtrip_keeps_keys_values_tombstones_and_order(broker: Broker, name: Names) -> None:
    topic = name("t")
    broker.create_topic(topic, 1)
    values = [b"a", None, b"", b"\x00\xffbinary", b"x" * 10_000] + [b"v%d" % i for i in range(500)]
    keys = [b"k1", b"k1", None, b"k2", None] + [None if i % 3 else b"k%d" % i for i in range(500)]
    produce(broker, topic, values, keys)
    c = broker.consumer(name("g"), [topic])
    got = consume(c, len(values))
    assert [r[4] for r in got] == values  # None stays None: a tombstone
    assert [r[3] for r in got] == keys
    assert [r[2] for r in got] == list(range(len(values)))
    assert {(r[0], r[1]) for r in got} == {(topic, 0)}
    assert quiet(c, 0.5) == []
    c.close()


def test_timestamps_are_epoch_milliseconds(broker: Broker, name: Names) -> None:
    topic = name("t")
    before = int(time.time() * 1000) - 5_000
    produce(broker, topic, [b"x"])
    c = broker.consumer(name("g"), [topic])
    batch = MessageBatch()
    deadline = time.monotonic() + WAIT
    while not len(batch) and time.monotonic() < deadline:
        batch = c.poll(10, 0.1)
    assert len(batch) == 1
    assert before <= batch.timestamps[0] <= int(time.time() * 1000) + 5_000
    c.close()


def test_offsets_are_dense_from_zero(broker: Broker, name: Names) -> None:
    topic = name("t")
    broker.create_topic(topic, 3)
    p = broker.producer()
    for batch in range(7):  # several produce calls and flushes
        p.produce(topic, [b"%d-%d" % (batch, i) for i in range(300)])
        if batch % 2:
            p.flush()
    p.flush()
    ends = broker.end_offsets(topic)
    assert sum(ends.values()) == 2100
    c = broker.consumer(name("g"), [topic])
    got = consume(c, 2100)
    by_partition: dict[int, list[int]] = defaultdict(list)
    for _, part, off, _, _ in got:
        by_partition[part].append(off)
    for part, offs in by_partition.items():
        assert offs == list(range(ends[part])), f"partition {part}"
    assert quiet(c, 0.5) == []
    c.close()


def test_same_key_same_partition_and_per_key_order(broker: Broker, name: Names) -> None:
    topic = name("t")
    broker.create_topic(topic, 3)
    n, nkeys = 10_000, 97
    keys = [b"key-%d" % (i % nkeys) for i in range(n)]
    values = [b"%d" % i for i in range(n)]
    produce(broker, topic, values, keys)
    c = broker.consumer(name("g"), [topic])
    got = consume(c, n, max_records=5000)
    partitions_of: dict[bytes | None, set[int]] = defaultdict(set)
    seqs: dict[bytes | None, list[int]] = defaultdict(list)
    for _, part, _, key, value in got:
        partitions_of[key].add(part)
        assert value is not None
        seqs[key].append(int(value))
    assert all(len(ps) == 1 for ps in partitions_of.values())
    assert len({p for ps in partitions_of.values() for p in ps}) > 1, "keys spread out"
    for key, seq in seqs.items():
        assert seq == sorted(seq) and len(seq) == len(set(seq)), key
    assert sum(len(s) for s in seqs.values()) == n
    c.close()


# -- groups ----------------------------------------------------------------------------------


def test_group_members_split_partitions_and_take_over(broker: Broker, name: Names) -> None:
    topic, group = name("t"), name("g")
    broker.create_topic(topic, 4)
    everything = set(all_partitions(topic, 4))
    a = broker.consumer(group, [topic])
    b = broker.consumer(group, [topic])

    def split(_: object) -> bool:
        pa, pb = set(a.assignment()), set(b.assignment())
        return bool(pa) and bool(pb) and not pa & pb and pa | pb == everything

    poll_until([a, b], split)
    b.close()
    poll_until([a], lambda _: set(a.assignment()) == everything)
    a.close()


def test_restarted_consumer_resumes_from_committed_offset(broker: Broker, name: Names) -> None:
    topic, group = name("t"), name("g")
    broker.create_topic(topic, 2)
    produce(broker, topic, [b"%d" % i for i in range(1000)])
    first = broker.consumer(group, [topic])
    processed: list[Rec] = []
    positions: dict[TopicPartition, int] = {}

    def take(_: int, batch: MessageBatch) -> None:
        if len(processed) < 400:  # process and commit about 400, read-ahead is not processed
            processed.extend(recs(batch))
            positions.update(batch.next_offsets())
            first.commit(batch.next_offsets())

    poll_until([first], lambda _: len(processed) >= 400, max_records=50, on_batch=take)
    first.close()
    produce(broker, topic, [b"%d" % i for i in range(1000, 1500)])
    second = broker.consumer(group, [topic])
    rest = consume(second, 1500 - len(processed))
    assert quiet(second, 0.5) == []
    for tp, start in positions.items():  # a partition the first consumer drained may get none
        assert min((r[2] for r in rest if (r[0], r[1]) == tp), default=start) == start
    seen = [(r[1], r[2]) for r in processed + rest]
    assert len(seen) == len(set(seen)) == 1500  # no duplicates, no gaps
    assert sorted(int(r[4] or b"") for r in processed + rest) == list(range(1500))
    second.close()


def test_on_revoke_runs_before_partitions_move(broker: Broker, name: Names) -> None:
    """A commits only from on_revoke; B must start exactly where A's on_revoke left off."""
    topic, group = name("t"), name("g")
    broker.create_topic(topic, 4)
    produce(broker, topic, [b"%d" % i for i in range(2000)])
    events: list[tuple[str, str, TopicPartition]] = []
    done: dict[TopicPartition, int] = {}  # A's processed positions
    consumers: dict[str, Consumer] = {}

    def revoke_a(parts: list[TopicPartition]) -> None:
        assert set(parts) <= set(consumers["a"].assignment()), "still owned during on_revoke"
        events.extend(("revoke", "a", tp) for tp in parts)
        consumers["a"].commit({tp: done[tp] for tp in parts if tp in done})

    def assign(member: str) -> Callable[[list[TopicPartition]], None]:
        return lambda parts: events.extend(("assign", member, tp) for tp in parts)

    a = consumers["a"] = broker.consumer(group, [topic], on_assign=assign("a"), on_revoke=revoke_a)
    got_a: list[Rec] = []

    def track_a(i: int, batch: MessageBatch) -> None:
        if i == 0:
            got_a.extend(recs(batch))
            done.update(batch.next_offsets())

    poll_until([a], lambda _: len(got_a) >= 200, max_records=20, on_batch=track_a)
    b = consumers["b"] = broker.consumer(group, [topic], on_assign=assign("b"))
    got = poll_until(
        [a, b],
        lambda g: bool(b.assignment()) and len(got_a) + len(g[1]) >= 2000,
        max_records=20,
        on_batch=track_a,
    )
    moved = [tp for kind, m, tp in events if kind == "assign" and m == "b"]
    assert moved
    for tp in moved:
        revoked_at = events.index(("revoke", "a", tp))
        assert revoked_at < events.index(("assign", "b", tp)), tp
    rest = got[1] + quiet(a, 0.5) + quiet(b, 0.5)
    seen = [(r[1], r[2]) for r in got_a + rest]
    assert len(seen) == len(set(seen)), "a record was read by both members"
    assert len(seen) == 2000
    n_revokes = len([e for e in events if e[0] == "revoke"])
    a.close()
    assert len([e for e in events if e[0] == "revoke"]) > n_revokes, "close runs on_revoke"
    b.close()


def test_seek_from_on_assign_and_later(broker: Broker, name: Names) -> None:
    topic = name("t")
    broker.create_topic(topic, 2)
    produce(broker, topic, [b"%d" % i for i in range(200)], [b"k%d" % i for i in range(200)])
    ends = broker.end_offsets(topic)
    assert min(ends.values()) > 10, "200 distinct keys fill both partitions"
    box: dict[str, Consumer] = {}

    def on_assign(parts: list[TopicPartition]) -> None:
        box["c"].seek({tp: 10 for tp in parts})

    c = box["c"] = broker.consumer(name("g"), [topic], on_assign=on_assign)
    got = consume(c, 200 - 20)
    assert quiet(c, 0.5) == []
    for p in range(2):
        offs = [r[2] for r in got if r[1] == p]
        assert offs == list(range(10, ends[p])), p
    c.seek({(topic, 0): ends[0] - 5})  # outside the callback too
    again = consume(c, 5)
    assert [(r[1], r[2]) for r in again] == [(0, o) for o in range(ends[0] - 5, ends[0])]
    c.close()


def test_lag_counts_unread_records_of_assigned_partitions(broker: Broker, name: Names) -> None:
    topic = name("t")
    broker.create_topic(topic, 2)
    produce(broker, topic, [b"%d" % i for i in range(300)])
    c = broker.consumer(name("g"), [topic])
    early = poll_until([c], lambda _: bool(c.assignment()), max_records=10)[0]
    assert c.lag() == 300 - len(early)
    more = consume(c, 300 - len(early), max_records=10)
    assert c.lag() == 0 == 300 - len(early) - len(more)
    produce(broker, topic, [b"x"] * 7)
    assert c.lag() == 7
    c.close()


# -- broker ----------------------------------------------------------------------------------


def test_topics_and_end_offsets(broker: Broker, name: Names) -> None:
    topic = name("t")
    assert broker.end_offsets(topic) == {}
    broker.create_topic(topic, 3)
    broker.create_topic(topic, 5)  # idempotent: an existing topic is left as it is
    assert broker.topics()[topic] == 3
    assert broker.end_offsets(topic) == {0: 0, 1: 0, 2: 0}
    keys = [b"k%d" % (i % 10) for i in range(100)]
    produce(broker, topic, [b"v"] * 100, keys)
    c = broker.consumer(name("g"), [topic])
    counts: dict[int, int] = defaultdict(int)
    for r in consume(c, 100):
        counts[r[1]] += 1
    assert broker.end_offsets(topic) == {p: counts.get(p, 0) for p in range(3)}
    c.close()


# -- embedded only: several processes share one log file --------------------------------------


def _produce_in_process(path: str, topic: str, proc: int, n: int) -> None:
    broker = EmbeddedBroker(path)
    p = broker.producer()
    for start in range(0, n, 50):
        stop = min(n, start + 50)
        p.produce(
            topic,
            [b"%d:%d" % (proc, i) for i in range(start, stop)],
            [b"%d-%d" % (proc, i % 5) for i in range(start, stop)],
        )
    p.close()


def test_embedded_multi_process_produce_is_dense_and_exactly_once(tmp_path: Path) -> None:
    path, topic, procs, n = str(tmp_path / "log.db"), "shared", 4, 2000
    broker = EmbeddedBroker(path)
    broker.create_topic(topic, 3)
    ctx = mp.get_context("spawn")
    workers = [
        ctx.Process(target=_produce_in_process, args=(path, topic, i, n)) for i in range(procs)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    ends = broker.end_offsets(topic)
    assert sum(ends.values()) == procs * n
    c = broker.consumer("check", [topic])
    got = consume(c, procs * n, max_records=5000)
    offsets: dict[int, list[int]] = defaultdict(list)
    per_key: dict[bytes | None, list[int]] = defaultdict(list)
    for _, part, off, key, value in got:
        offsets[part].append(off)
        assert value is not None
        per_key[key].append(int(value.split(b":")[1]))
    for part, offs in offsets.items():
        assert offs == list(range(ends[part]))
    values = sorted(r[4] or b"" for r in got)
    assert values == sorted(b"%d:%d" % (p, i) for p in range(procs) for i in range(n))
    for key, seq in per_key.items():
        assert seq == sorted(seq), key
    c.close()
