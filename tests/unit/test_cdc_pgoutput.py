"""pgoutput decoding on bytes captured from PostgreSQL 15 (tests/unit needs no server).

Captured with REPLICA IDENTITY FULL on
``probe_t2(id int PK, title varchar(45), r float8, n numeric(5,2), b bool, ts timestamp,
tz timestamptz, big bigint, ts3 timestamp(3), d date, by bytea)``: an insert of two rows,
an update, a primary-key change, a delete and a truncate (whose transaction re-sends
the Relation message).
"""

from __future__ import annotations

import pytest

from tidelake.sources.cdc import pgoutput
from tidelake.sources.cdc.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
    int_to_lsn,
    lsn_to_int,
)

CAPTURE = [
    "4200000000021fd330000304240484c771000002fc",
    "52000040277075626c69630070726f62655f74320066000b0169640000000017ffffffff017469746c65000000041300000031017200000002bdffffffff016e00000006a40005000601620000000010ffffffff017473000000045affffffff01747a00000004a0ffffffff016269670000000014ffffffff01747333000000045a000000030164000000043affffffff0162790000000011ffffffff",
    "49000040274e000b7400000001317400000001617400000003312e357400000004322e3235740000000174740000001a323032342d30312d30322030333a30343a30352e3132333435367400000018323032342d30312d30322030313a30343a30352e352b3030740000000b31303030303030303030307400000017323032342d30312d30322030333a30343a30352e313233740000000a323032342d30312d303274000000065c7830313032",
    "49000040274e000b7400000001326e6e6e6e6e6e6e6e6e6e",
    "430000000000021fd33000000000021fd360000304240484c771",
    "4200000000021fd428000304240484e558000002fd",
    "55000040274f000b7400000001317400000001617400000003312e357400000004322e3235740000000174740000001a323032342d30312d30322030333a30343a30352e3132333435367400000018323032342d30312d30322030313a30343a30352e352b3030740000000b31303030303030303030307400000017323032342d30312d30322030333a30343a30352e313233740000000a323032342d30312d303274000000065c78303130324e000b7400000001317400000001627400000003312e357400000004322e3235740000000174740000001a323032342d30312d30322030333a30343a30352e3132333435367400000018323032342d30312d30322030313a30343a30352e352b3030740000000b31303030303030303030307400000017323032342d30312d30322030333a30343a30352e313233740000000a323032342d30312d303274000000065c7830313032",
    "430000000000021fd42800000000021fd458000304240484e558",
    "4200000000021fd4f800030424048529f2000002fe",
    "55000040274f000b7400000001326e6e6e6e6e6e6e6e6e6e4e000b7400000001336e6e6e6e6e6e6e6e6e6e",
    "430000000000021fd4f800000000021fd52800030424048529f2",
    "4200000000021fd5a80003042404855063000002ff",
    "44000040274f000b7400000001317400000001627400000003312e357400000004322e3235740000000174740000001a323032342d30312d30322030333a30343a30352e3132333435367400000018323032342d30312d30322030313a30343a30352e352b3030740000000b31303030303030303030307400000017323032342d30312d30322030333a30343a30352e313233740000000a323032342d30312d303274000000065c7830313032",
    "430000000000021fd5a800000000021fd5d80003042404855063",
    "4200000000021fe2f0000304240485ae8e00000300",
    "52000040277075626c69630070726f62655f74320066000b0169640000000017ffffffff017469746c65000000041300000031017200000002bdffffffff016e00000006a40005000601620000000010ffffffff017473000000045affffffff01747a00000004a0ffffffff016269670000000014ffffffff01747333000000045a000000030164000000043affffffff0162790000000011ffffffff",
    "54000000010000004027",
    "430000000000021fe2f000000000021fe460000304240485ae8e",
]


def _decoded() -> list[pgoutput.Message]:
    return [pgoutput.decode(bytes.fromhex(h)) for h in CAPTURE]


def test_message_sequence() -> None:
    kinds = [type(m).__name__ for m in _decoded()]
    assert kinds == [
        "Begin", "Relation", "Insert", "Insert", "Commit",
        "Begin", "Update", "Commit",
        "Begin", "Update", "Commit",
        "Begin", "Delete", "Commit",
        "Begin", "Relation", "Truncate", "Commit",
    ]  # fmt: skip


def test_begin_commit_lsns_are_ordered() -> None:
    msgs = _decoded()
    begins = [m for m in msgs if isinstance(m, Begin)]
    commits = [m for m in msgs if isinstance(m, Commit)]
    for b, c in zip(begins, commits, strict=True):
        assert b.final_lsn == c.commit_lsn < c.end_lsn
        assert b.commit_ts_us == c.commit_ts_us
        assert b.commit_ts_us > 1_600_000_000_000_000  # microseconds since 1970
    assert all(c1.end_lsn <= b2.final_lsn for c1, b2 in zip(commits, begins[1:], strict=False))
    assert len({b.xid for b in begins}) == len(begins)


def test_relation_columns_types_and_keys() -> None:
    rel = _decoded()[1]
    assert isinstance(rel, Relation)
    assert (rel.schema, rel.name, rel.replica_identity) == ("public", "probe_t2", "f")
    names = [c.name for c in rel.columns]
    assert names == ["id", "title", "r", "n", "b", "ts", "tz", "big", "ts3", "d", "by"]
    types = {c.name: (c.type_oid, c.typmod) for c in rel.columns}
    assert types["id"] == (23, -1)
    assert types["title"] == (1043, 49)  # varchar(45): 45 + 4
    assert types["n"] == (1700, (5 << 16 | 2) + 4)
    assert types["ts3"] == (1114, 3)
    assert all(c.is_key for c in rel.columns)  # REPLICA IDENTITY FULL flags every column


def test_row_images_match_debezium_json() -> None:
    msgs = _decoded()
    rel = pgoutput.prepare(msgs[1])  # type: ignore[arg-type]
    first, second = msgs[2], msgs[3]
    assert isinstance(first, Insert) and isinstance(second, Insert)
    assert pgoutput.image(rel, first.new) == {
        "id": 1,
        "title": "a",
        "r": 1.5,
        "n": 2.25,
        "b": True,
        "ts": 1704164645123456,  # timestamp: epoch micros (MicroTimestamp)
        "tz": "2024-01-02T01:04:05.5Z",  # timestamptz: ISO UTC (ZonedTimestamp)
        "big": 10000000000,
        "ts3": 1704164645123,  # timestamp(3): epoch millis (Timestamp)
        "d": 19724,  # date: days since epoch
        "by": "AQI=",  # bytea: base64
    }
    assert set(pgoutput.image(rel, second.new).values()) == {2, None}
    as_string = pgoutput.prepare(msgs[1], "string")  # type: ignore[arg-type]
    assert pgoutput.image(as_string, first.new)["n"] == "2.25"


def test_update_and_delete_carry_old_rows_with_replica_identity_full() -> None:
    msgs = _decoded()
    rel = pgoutput.prepare(msgs[1])  # type: ignore[arg-type]
    upd, key_change, delete = msgs[6], msgs[9], msgs[12]
    assert isinstance(upd, Update) and isinstance(key_change, Update)
    assert upd.old is not None and not upd.old_is_key
    assert pgoutput.image(rel, upd.old)["title"] == "a"
    assert pgoutput.image(rel, upd.new)["title"] == "b"
    assert key_change.old is not None
    assert pgoutput.image(rel, key_change.old)["id"] == 2
    assert pgoutput.image(rel, key_change.new)["id"] == 3
    assert isinstance(delete, Delete) and not delete.old_is_key
    assert pgoutput.image(rel, delete.old)["title"] == "b"
    trunc = msgs[16]
    assert isinstance(trunc, Truncate) and trunc.relids == [rel.relid]


def test_key_only_old_tuple_and_unchanged_toast() -> None:
    rel = pgoutput.prepare(
        Relation(
            1,
            "public",
            "t",
            "d",
            [pgoutput.Column("id", 23, -1, True), pgoutput.Column("body", 25, -1, False)],
        )
    )
    # Delete with a key-only old tuple: 'K', 2 columns, id='7' then a null
    delete = pgoutput.decode(b"D\x00\x00\x00\x01K\x00\x02t\x00\x00\x00\x017n")
    assert isinstance(delete, Delete) and delete.old_is_key
    assert pgoutput.image(rel, delete.old, key_only=True) == {"id": 7, "body": None}
    # Update whose TOASTed column did not change: 'u'
    upd = pgoutput.decode(b"U\x00\x00\x00\x01N\x00\x02t\x00\x00\x00\x017u")
    assert isinstance(upd, Update) and upd.old is None
    assert pgoutput.image(rel, upd.new) == {"id": 7, "body": pgoutput.UNAVAILABLE}


def test_protocol_errors() -> None:
    with pytest.raises(pgoutput.ProtocolError):
        pgoutput.decode(b"Z\x00")
    with pytest.raises(pgoutput.ProtocolError):
        pgoutput.decode(b"I\x00\x00\x00\x01N\x00\x01b\x00\x00\x00\x01x")  # binary column


@pytest.mark.parametrize("text", ["0/0", "0/1A2B3C4", "16/B374D848", "FFFFFFFF/FFFFFFFF"])
def test_lsn_round_trip(text: str) -> None:
    assert int_to_lsn(lsn_to_int(text)) == text


def test_converters_edge_values() -> None:
    ts = pgoutput.converter(1114, -1)
    assert ts("1970-01-01 00:00:00") == 0
    assert ts("infinity") is None
    assert pgoutput.converter(1184, -1)("2024-01-02 03:04:05+00") == "2024-01-02T03:04:05Z"
    assert pgoutput.converter(1083, -1)("01:00:00.5") == 3_600_500_000
    assert pgoutput.converter(1700, -1)("NaN") is None
    assert pgoutput.converter(701, -1)("Infinity") == float("inf")
    uuid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert pgoutput.converter(2950, -1)(uuid) == uuid
