"""The user-profile scenario: profiles through the log, cleaned and pseudonymized into one row
per user, and closed 1-minute windows per nationality; all compared with references computed
here from the generator. On embedded defaults both land in SQLite; with
``TIDELAKE_PROFILES_STORE``/``TIDELAKE_ANALYTICS_STORE`` the same file lands them in Cassandra
and MongoDB, as the reference architecture wrote it."""

from __future__ import annotations

import calendar
import hashlib
import hmac
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from scenario_run import run_until, sqlite_value

from tidelake.config import Pipeline, load
from tidelake.lake import QueryEngine
from tidelake.sources.generator import generate

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 2000
KEY = "users-scenario-test-key-0123456789"


@pytest.mark.integration
def test_profiles_land_pseudonymized_and_windows_count_signups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, adults, windows = _scenario(tmp_path, monkeypatch, LIMIT)
    scenario = pipeline.base_dir
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
    _assert_profiles(users, adults)
    assert {(r["s"], r["nationality"]): r["users"] for r in signups} == dict(windows)
    assert sum(r["users"] for r in by_nat) == len(adults)
    assert all(panels), panels


@pytest.mark.integration
def test_profiles_land_in_cassandra_and_windows_in_mongodb(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    unique: str,
    cassandra_url: str,
    cql: Any,
    mongodb_url: str,
    mongo: Any,
) -> None:
    keyspace = f"usersprofilespace_{unique}"
    monkeypatch.setenv("TIDELAKE_PROFILES_STORE", f"{cassandra_url}/{keyspace}")
    monkeypatch.setenv("TIDELAKE_ANALYTICS_STORE", f"{mongodb_url}{mongo.name}")
    pipeline, adults, windows = _scenario(tmp_path, monkeypatch, STORES_LIMIT)

    def profiles() -> list[dict[str, Any]]:
        try:
            return [r._asdict() for r in cql.execute(f"SELECT * FROM {keyspace}.users_profiles")]
        except Exception:  # noqa: BLE001 - the keyspace is created by the first batch
            return []

    def signups() -> list[dict[str, Any]]:
        return list(mongo["signups_per_minute"].find())

    run_until(
        pipeline,
        lambda: (
            len(profiles()) >= len(adults)
            and sum(r["users"] for r in signups()) >= sum(windows.values())
        ),
    )
    try:
        _assert_profiles(profiles(), adults)
        assert {
            (calendar.timegm(r["window_start"].timetuple()), r["nationality"]): r["users"]
            for r in signups()
        } == dict(windows)
        assert all(
            r["_id"] == {k: r[k] for k in ("window_start", "nationality")} for r in signups()
        )
        assert not (pipeline.base_dir / ".tidelake" / "users.db").exists()  # nothing in SQLite
    finally:
        cql.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")


STORES_LIMIT = 600


def _scenario(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> tuple[Pipeline, dict[str, dict[str, Any]], Counter[tuple[int, str]]]:
    """A copy of the scenario generating ``limit`` profiles at once; its adults by id and the
    (minute, nationality) -> signups of every window the input closes."""
    scenario = tmp_path / "users"
    shutil.copytree(ROOT / "scenarios" / "users", scenario)
    monkeypatch.setenv("USERS_LIMIT", str(limit))
    monkeypatch.setenv("USERS_RATE", "0")
    monkeypatch.setenv("TIDELAKE_PSEUDONYMIZE_KEY", KEY)
    profiles = generate("user_profiles", 0, limit, 5).to_pylist()
    adults = {p["login"]["uuid"]: p for p in profiles if p["dob"]["age"] > 13}
    last_minute = int(max(p["ts"] for p in profiles).timestamp()) // 60 * 60
    windows = Counter(
        (int(p["ts"].timestamp()) // 60 * 60, p["nat"])
        for p in profiles
        if p["ts"].timestamp() < last_minute  # only windows the input closes are emitted
    )
    return load(scenario / "pipeline.yaml"), adults, windows


def _assert_profiles(users: list[dict[str, Any]], adults: dict[str, dict[str, Any]]) -> None:
    """One row per adult, personal fields keyed-HMAC'd, the e-mail domain derived."""
    assert {u["identifiant"] for u in users} == set(adults)
    for u in users[:50]:
        source = adults[u["identifiant"]]
        assert u["email"] == hmac.new(KEY.encode(), source["email"].encode(), "sha256").hexdigest()
        assert u["phone"] != source["phone"] and len(u["phone"]) == 64
        assert u["domain_name"] == source["email"].split("@")[1]
        assert hashlib.sha256(source["email"].encode()).hexdigest() != u["email"], "keyed"
