"""Users and roles, named tokens and their write scopes, on the API's real routes."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_serve_ingest_routes import PIPELINE
from typer.testing import CliRunner, Result

from tidelake.cli import app
from tidelake.config import loads
from tidelake.errors import ConfigError
from tidelake.serve.api import create_app
from tidelake.serve.auth import token_env
from tidelake.serve.server import check_bind
from tidelake.serve.users import Users, verify_password

TOKENS = PIPELINE + "serve:\n  tokens:\n    pos: {ingest: [orders, 'cdc.*', shop.orders.dlq]}\n"
POS_SECRET = "pos-Zq8xW3vR6tY1nB4m"


def basic(name: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def test_users_cli_add_list_remove_and_hashes_at_rest(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE)

    def cli(*args: str, stdin: str = "") -> Result:
        return CliRunner().invoke(app, list(args), input=stdin)

    added = cli("users", "add", str(path), "alice", "--role", "operator", "--password-stdin",
                stdin="correct horse battery\n")  # fmt: skip
    assert added.exit_code == 0, added.output
    short = cli("users", "add", str(path), "bob", "--password-stdin", stdin="short\n")
    assert short.exit_code == 2 and "at least 12 characters" in short.output
    bad_role = cli("users", "add", str(path), "bob", "--role", "root", "--password-stdin",
                   stdin="correct horse battery\n")  # fmt: skip
    assert bad_role.exit_code == 2 and "viewer, operator, admin" in bad_role.output
    listed = cli("users", "list", str(path))
    assert "alice" in listed.output and "operator" in listed.output and "bob" not in listed.output
    state = tmp_path / ".tidelake" / "state.db"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert b"correct horse" not in state.read_bytes()  # only the scrypt hash is stored
    users = Users(loads(PIPELINE, path))
    assert users.authenticate("alice", "correct horse battery") is not None
    assert users.authenticate("alice", "wrong horse battery") is None
    assert cli("users", "remove", str(path), "alice").exit_code == 0
    assert cli("users", "remove", str(path), "alice").exit_code == 2
    assert users.authenticate("alice", "correct horse battery") is None  # at once, not cached


def test_roles_gate_ingest_and_every_route_needs_a_login(tmp_path: Path) -> None:
    pipeline = loads(PIPELINE, tmp_path / "p.yaml")
    users = Users(pipeline)
    users.add("olga", "operator", "operator-password-1")
    users.add("vik", "viewer", "viewer-password-1")
    with TestClient(create_app(pipeline)) as c:
        # a user exists: no anonymous access any more, even on loopback
        assert c.get("/api/flows").status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/api/flows", headers=basic("olga", "wrong-password-1")).status_code == 401
        assert (
            c.get("/api/flows", headers=basic("nobody", "operator-password-1")).status_code == 401
        )
        garbage = {"Authorization": "Basic %%%"}
        assert c.get("/api/flows", headers=garbage).status_code == 401
        viewer = basic("vik", "viewer-password-1")
        assert c.get("/api/flows", headers=viewer).status_code == 200
        r = c.post("/api/ingest/orders", json={"a": 1}, headers=viewer)
        assert r.status_code == 403 and "user vik (viewer) may not ingest" in r.json()["detail"]
        operator = basic("olga", "operator-password-1")
        assert c.post("/api/ingest/orders", json={"a": 1}, headers=operator).json()["accepted"] == 1
        r = c.post("/api/ingest/cdc.items", json={"a": 1}, headers=operator)
        assert r.status_code == 403  # CDC topics are never in the default scope
        assert "viewer-password" not in r.text


def test_named_token_writes_only_its_topics_and_globs_never_reach_cdc(tmp_path: Path) -> None:
    pipeline = loads(TOKENS, tmp_path / "p.yaml")
    os.environ[token_env("pos")] = POS_SECRET
    try:
        app = create_app(pipeline, token="main-Kx7pQ2wE9rT4yU6i")
    finally:
        del os.environ[token_env("pos")]
    pos = {"Authorization": f"Bearer {POS_SECRET}"}
    main = {"Authorization": "Bearer main-Kx7pQ2wE9rT4yU6i"}
    with TestClient(app) as c:
        assert c.post("/api/ingest/orders", json={"a": 1}, headers=pos).status_code == 200
        r = c.post("/api/ingest/returns", json={"a": 1}, headers=pos)
        assert r.status_code == 403 and "not in this caller's ingest scope" in r.json()["detail"]
        assert c.post("/api/ingest/returns", json={"a": 1}, headers=main).status_code == 200
        # 'cdc.*' is a glob: it does not reach the CDC topic; an exact name does
        assert c.post("/api/ingest/cdc.items", json={"a": 1}, headers=pos).status_code == 403
        assert c.post("/api/ingest/shop.orders.dlq", json={"a": 1}, headers=pos).status_code == 200
        assert c.post("/api/ingest/shop.orders.dlq", json={"a": 1}, headers=main).status_code == 403
        wrong = {"Authorization": "Bearer pos-Zq8xW3vR6tY1nB4"}
        assert c.post("/api/ingest/orders", json={"a": 1}, headers=wrong).status_code == 401


def test_bind_beyond_loopback_needs_a_token_or_a_user_and_strong_named_tokens() -> None:
    with pytest.raises(ConfigError, match="add a user"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", None, users=True)
    check_bind("0.0.0.0", None, {token_env("pos"): POS_SECRET})
    with pytest.raises(ConfigError, match="weak TIDELAKE_API_TOKEN_POS"):
        check_bind("0.0.0.0", None, {token_env("pos"): "short"})


def test_stored_hash_is_salted_scrypt() -> None:
    from tidelake.serve.users import hash_password

    a, b = hash_password("same password!"), hash_password("same password!")
    assert a != b and a.startswith("scrypt$16384$8$1$")
    assert verify_password("same password!", a) and not verify_password("same password?", a)
    assert not verify_password("same password!", "md5$abc")
