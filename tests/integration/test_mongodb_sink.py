"""The mongodb sink on a real MongoDB-wire server (FerretDB v1 on SQLite, which has no
multi-document transactions, so positions follow idempotent upserts): ids from key columns,
dead letters for null keys and values BSON cannot hold, ten kill -9s mid-stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import killing
import orjson
import pytest
import stores
from test_lake_evolution import read_topic

from tidelake.config import load
from tidelake.runtime.runner import FlowFailed, FlowRunner

pytestmark = pytest.mark.integration


def test_upserts_by_key_and_dead_letters(
    tmp_path: Path, unique: str, mongodb_url: str, mongo: Any
) -> None:
    rows = [
        {"nat": "FR", "day": 1, "users": 3},
        {"nat": "DE", "day": 1, "users": 2},
        {"nat": None, "day": 1, "users": 9},
        {"nat": "FR", "day": 1, "users": 4},
        {"nat": "FR", "day": 2, "users": 1, "huge": True},
    ]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    broker = f"embedded:///{tmp_path}/log.db"
    (tmp_path / "p.yaml").write_text(f"""\
name: mg_{unique}
broker: {broker}
flows:
  land:
    source: {{type: file, path: in.jsonl}}
    transforms:  # an unsigned 64-bit value past what BSON's int64 holds
      - {{type: sql, query: "SELECT nat, day, CASE WHEN huge THEN 18446744073709551615::UBIGINT
          ELSE users::UBIGINT END AS users FROM batch"}}
    sink: {{type: mongodb, url: "{mongodb_url}db_{unique}", collection: by_nat, key: [nat, day]}}
    dead_letter: bad_{unique}
""")
    killing.run_to_exit(lambda: killing.start(tmp_path / "p.yaml"))
    docs = sorted(mongo.by_nat.find({}, {"_id": 1, "users": 1}), key=lambda d: d["users"])
    assert docs == [
        {"_id": {"nat": "DE", "day": 1}, "users": 2},
        {"_id": {"nat": "FR", "day": 1}, "users": 4},
    ]
    dlq = read_topic(broker, f"bad_{unique}", f"g_{unique}", 2)
    reasons = sorted(d["reason"] for d in dlq)
    assert len(dlq) == 2, dlq
    assert "column 'users'" in reasons[0] and "uint64" in reasons[0]
    assert "key column 'nat' is null" in reasons[1]
    (stored,) = list(mongo["_tidelake_checkpoints"].find({"_id": f"mg_{unique}/land"}))
    assert stored["pipeline"] == f"mg_{unique}" and stored["flow"] == "land"


def test_transactions_always_on_a_server_without_them_is_a_clear_error(
    tmp_path: Path, unique: str, mongodb_url: str, mongo: Any
) -> None:
    (tmp_path / "p.yaml").write_text(f"""\
name: mg_{unique}
broker: embedded:///{tmp_path}/log.db
flows:
  land:
    source: {{type: generator, kind: user_profiles, limit: 1}}
    sink: {{type: mongodb, url: "{mongodb_url}", database: db_{unique}, collection: c,
            key: [email], transactions: always}}
""")
    with pytest.raises(FlowFailed, match="has no multi-document transactions"):
        FlowRunner(load(tmp_path / "p.yaml"), "land").run()


def test_ten_kill_9s_mid_stream_leave_exactly_the_reference(
    tmp_path: Path, unique: str, mongodb_url: str, mongo: Any
) -> None:
    sink = (
        f'{{type: mongodb, url: "{mongodb_url}", database: db_{unique}, collection: users,'
        " key: [id]}"
    )

    def positions() -> int:
        docs = list(mongo["_tidelake_checkpoints"].find({"_id": f"st_{unique}/land"}))
        return sum(p["next"] for p in (docs[0] if docs else {}).get("positions", []))

    stores.kill_while_streaming(tmp_path, unique, sink, positions, kills=10)
    docs = list(mongo.users.find({}))
    assert len(docs) == stores.KEYS
    assert {d["_id"]: d["seq"] for d in docs} == stores.reference()
    for d in docs:
        expected = stores.record(d["seq"])
        assert (d["id"], d["name"], d["score"]) == (d["_id"], expected["name"], expected["score"])
