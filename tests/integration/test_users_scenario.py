"""The user-profile scenario: profiles through the log, cleaned and pseudonymized into one row
per user, and closed 1-minute windows per nationality; all compared with references computed
here from the generator."""

from __future__ import annotations

import hashlib
import hmac
import shutil
from collections import Counter
from pathlib import Path

import pytest
from scenario_run import run_until, sqlite_value

from tidelake.config import load
from tidelake.lake import QueryEngine
from tidelake.sources.generator import generate

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 2000
KEY = "users-scenario-test-key-0123456789"


@pytest.mark.integration
def test_profiles_land_pseudonymized_and_windows_count_signups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = tmp_path / "users"
    shutil.copytree(ROOT / "scenarios" / "users", scenario)
    monkeypatch.setenv("USERS_LIMIT", str(LIMIT))
    monkeypatch.setenv("USERS_RATE", "0")
    monkeypatch.setenv("TIDELAKE_PSEUDONYMIZE_KEY", KEY)
    profiles = generate("user_profiles", 0, LIMIT, 5).to_pylist()
    adults = {p["login"]["uuid"]: p for p in profiles if p["dob"]["age"] > 13}
    last_minute = int(max(p["ts"] for p in profiles).timestamp()) // 60 * 60
    windows = Counter(
        (int(p["ts"].timestamp()) // 60 * 60, p["nat"])
        for p in profiles
        if p["ts"].timestamp() < last_minute  # only windows the input closes are emitted
    )
    pipeline = load(scenario / "pipeline.yaml")
    db = scenario / ".tidelake" / "users.db"
    run_until(
        pipeline,
        lambda: (
            sqlite_value(db, "users_profiles") >= len(adults)
            and sqlite_value(db, "signups_per_minute", "sum(users)") >= sum(windows.values())
        ),
    )

    with QueryEngine(pipeline) as engine:
        users = engine.sql("SELECT * FROM users_profiles").to_pylist()
        signups = engine.sql(
            "SELECT epoch(CAST(window_start AS TIMESTAMP))::BIGINT AS s, nationality, users"
            " FROM signups_per_minute"
        ).to_pylist()
        by_nat = engine.sql(pipeline.queries["users_by_nationality"]).to_pylist()
        panels = [engine.sql(p.sql).num_rows for p in pipeline.dashboard]
    assert {u["identifiant"] for u in users} == set(adults)
    for u in users[:50]:
        source = adults[u["identifiant"]]
        assert u["email"] == hmac.new(KEY.encode(), source["email"].encode(), "sha256").hexdigest()
        assert u["phone"] != source["phone"] and len(u["phone"]) == 64
        assert u["domain_name"] == source["email"].split("@")[1]
        assert hashlib.sha256(source["email"].encode()).hexdigest() != u["email"], "keyed"
    assert {(r["s"], r["nationality"]): r["users"] for r in signups} == dict(windows)
    assert sum(r["users"] for r in by_nat) == len(adults)
    assert all(panels), panels
