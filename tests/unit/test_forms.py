"""Operator forms on the API's real routes, the embedded log and the state database: login,
sessions, CSRF, validation, idempotency, dead letters and the audit trail."""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tidelake.broker import connect
from tidelake.cli import app
from tidelake.config import FormField, Pipeline, loads
from tidelake.errors import ConfigError
from tidelake.runtime.dead_letters import read
from tidelake.serve.api import create_app
from tidelake.serve.engine import Limits
from tidelake.serve.forms import parse
from tidelake.serve.users import STALE, Entries, Entry, Sessions, Users

PIPELINE = """\
name: shop
flows:
  ops_land:
    source: {type: topic, topic: ops}
    sink: {type: table, table: ops, mode: upsert, key: [entry_id]}
forms:
  sale:
    title: Record a sale
    topic: ops
    fields:
      product_id: {label: Product, choices: [SKU-1, SKU-2]}
      quantity: {type: integer, min: 1, max: 500}
      note: {required: false, max_length: 20}
  audit:
    title: Stock count
    topic: ops
    roles: [admin]
    fields:
      counted: {type: integer}
"""
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def accounts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state database with operator olga and viewer vera (scrypt once, not per test)."""
    folder = tmp_path_factory.mktemp("accounts")
    p = loads(PIPELINE, folder / "shop.yaml")
    Users(p).add("olga", "operator", PASSWORD)
    Users(p).add("vera", "viewer", PASSWORD)
    return p.state_dir / "state.db"


@pytest.fixture
def pipeline(tmp_path: Path, accounts: Path) -> Pipeline:
    path = tmp_path / "shop.yaml"
    path.write_text(PIPELINE)
    p = loads(PIPELINE, path)
    p.state_dir.mkdir()
    shutil.copy2(accounts, p.state_dir / "state.db")
    return p


@pytest.fixture
def client(pipeline: Pipeline) -> TestClient:
    """The app without its lifespan: no query worker starts unless a test needs one."""
    return TestClient(create_app(pipeline))


def records(pipeline: Pipeline, topic: str) -> list[dict[str, Any]]:
    broker = connect(pipeline.url(pipeline.broker))
    try:
        return [letter.value for letter in read(broker, topic, timeout=10)]
    finally:
        broker.close()


def login(client: TestClient, user: str = "olga", password: str = PASSWORD) -> httpx.Response:
    page = client.get("/forms")
    nonce = re.search(r"name='csrf' value='([^']+)'", page.text)
    assert nonce, page.text
    return client.post(
        "/forms/login",
        data={"csrf": nonce.group(1), "user": user, "password": password},
        follow_redirects=False,
    )


def hidden(page: str, name: str) -> str:
    match = re.search(rf"name='{name}' value='([^']*)'", page)
    assert match, page
    return match.group(1)


def sale(client: TestClient, **values: str) -> tuple[httpx.Response, dict[str, str]]:
    page = client.get("/forms/sale").text
    data = {"csrf": hidden(page, "csrf"), "entry_id": hidden(page, "entry_id")}
    data |= {"product_id": "SKU-1", "quantity": "3", "note": ""} | values
    return client.post("/forms/sale", data=data), data


def test_forms_config_is_checked_with_file_and_line() -> None:
    bad = PIPELINE.replace("{type: integer, min: 1, max: 500}", "{min: 1}")
    with pytest.raises(ConfigError, match=r"<pipeline>:12: forms.sale.fields.quantity: .*min/max"):
        loads(bad)
    with pytest.raises(ConfigError, match="the form door adds it"):
        loads(PIPELINE.replace("note: {required", "entered_by: {required"))
    with pytest.raises(ConfigError, match="topic names use"):
        loads(PIPELINE.replace("title: Record a sale\n    topic: ops", "title: S\n    topic: __x"))
    with pytest.raises(ConfigError, match="forms.audit.roles.0"):
        loads(PIPELINE.replace("roles: [admin]", "roles: [root]"))


@pytest.mark.parametrize(
    ("spec", "raw", "want"),
    [
        ({"type": "integer"}, " 42 ", 42),
        ({"type": "integer"}, 7.0, 7),
        ({"type": "number", "min": 0}, "2.5", 2.5),
        ({"type": "boolean"}, None, False),
        ({"type": "boolean"}, "on", True),
        ({"type": "date"}, "2026-12-03", "2026-12-03"),
        ({"required": False}, "", None),
        ({"choices": ["a", 1]}, "1", "1"),
    ],
)
def test_values_are_parsed_by_type(spec: dict[str, Any], raw: Any, want: Any) -> None:
    assert (
        parse(FormField.model_validate(spec), raw, FormField.model_validate(spec).choices) == want
    )


@pytest.mark.parametrize(
    ("spec", "raw", "problem"),
    [
        ({"type": "integer"}, "4.5", "whole number"),
        ({"type": "integer"}, True, "whole number"),
        ({"type": "integer"}, "99999999999999999999", "whole number"),
        ({"type": "number"}, "nan", "finite"),
        ({"type": "integer", "max": 10}, "11", "at most 10"),
        ({"type": "date"}, "03/12/2026", "YYYY-MM-DD"),
        ({}, "  ", "required"),
        ({"max_length": 3}, "abcd", "at most 3 characters"),
        ({"choices": ["a", "b"]}, "c", "not one of the choices"),
    ],
)
def test_bad_values_name_the_problem(spec: dict[str, Any], raw: Any, problem: str) -> None:
    field = FormField.model_validate(spec)
    with pytest.raises(ValueError, match=problem):
        parse(field, raw, field.choices)


def test_every_form_page_needs_a_login_even_on_loopback(
    client: TestClient, pipeline: Pipeline
) -> None:
    assert "Log in" in client.get("/forms").text
    assert client.get("/forms/sale").status_code == 401
    forged = {"csrf": "x", "entry_id": "a" * 32, "product_id": "SKU-1", "quantity": "1"}
    assert client.post("/forms/sale", data=forged).status_code == 401
    assert records(pipeline, "ops") == []
    wrong = login(client, password="wrong horse battery")
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    assert "tidelake_session" not in client.cookies
    unknown = login(client, user="nobody")
    assert unknown.status_code == 401 and "Wrong user name or password" in unknown.text
    no_nonce = client.post("/forms/login", data={"user": "olga", "password": PASSWORD})
    assert no_nonce.status_code == 403 and "tidelake_session" not in client.cookies


def test_login_cookie_is_httponly_strict_and_secure_beyond_loopback(pipeline: Pipeline) -> None:
    for secure in (False, True):
        base = "https://testserver" if secure else "http://testserver"
        with TestClient(create_app(pipeline, secure_cookies=secure), base_url=base) as client:
            done = login(client)
            assert done.status_code == 303 and done.headers["location"] == "/forms"
            cookie = done.headers["set-cookie"]
            assert "tidelake_session=" in cookie and "HttpOnly" in cookie
            assert "SameSite=strict" in cookie and "Path=/forms" in cookie
            assert "Max-Age=28" in cookie  # 480 minutes: 28800 s
            assert ("Secure" in cookie) is secure
    page = TestClient(create_app(pipeline)).get("/forms")
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_an_entry_lands_in_the_topic_stamped_with_the_operator(
    client: TestClient, pipeline: Pipeline
) -> None:
    login(client)
    index = client.get("/forms").text
    assert "Logged in as olga (operator)" in index and "Record a sale" in index
    assert "Stock count" not in index  # an admin-only form
    done, sent = sale(client, quantity="12", note="counter 2")
    assert done.status_code == 200 and "recorded" in done.text, done.text
    (record,) = records(pipeline, "ops")
    assert record["entry_id"] == sent["entry_id"] and record["entered_by"] == "olga"
    assert record["product_id"] == "SKU-1" and record["quantity"] == 12
    assert record["note"] == "counter 2" and record["entered_at"].endswith("Z")
    assert hidden(done.text, "entry_id") != sent["entry_id"]  # the next entry, a new key


def test_a_double_submit_lands_once(client: TestClient, pipeline: Pipeline) -> None:
    login(client)
    first, data = sale(client)
    again = client.post("/forms/sale", data=data)  # a retried POST
    assert first.status_code == again.status_code == 200
    assert "was already recorded" in again.text
    page = client.get("/forms/sale").text
    clicks = {"csrf": hidden(page, "csrf"), "entry_id": hidden(page, "entry_id")}
    clicks |= {"product_id": "SKU-2", "quantity": "5"}
    answers: list[int] = []

    def click() -> None:
        answers.append(client.post("/forms/sale", data=clicks).status_code)

    threads = [threading.Thread(target=click) for _ in range(4)]  # a double (quadruple) click
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [200] * 4
    landed = records(pipeline, "ops")
    assert sorted(r["entry_id"] for r in landed) == sorted([data["entry_id"], clicks["entry_id"]])


def test_csrf_token_is_enforced(client: TestClient, pipeline: Pipeline) -> None:
    login(client)
    _, data = sale(client)
    for csrf in ("", "not-the-token"):
        forged = data | {"csrf": csrf, "entry_id": "b" * 32}
        refused = client.post("/forms/sale", data=forged)
        assert refused.status_code == 403 and "CSRF" in refused.text
    other = TestClient(create_app(pipeline))  # another session's token is no good
    login(other)
    stolen = other.post("/forms/sale", data=data | {"entry_id": "c" * 32})
    assert stolen.status_code == 403
    assert len(records(pipeline, "ops")) == 1


def test_invalid_entries_show_field_errors_and_go_to_the_dead_letter_topic(
    client: TestClient, pipeline: Pipeline
) -> None:
    login(client)
    refused, data = sale(client, product_id="SKU-9", quantity="0", note="x" * 30)
    assert refused.status_code == 422 and "Nothing was recorded" in refused.text
    assert "not one of the choices" in refused.text and "at least 1" in refused.text
    assert "at most 20 characters" in refused.text
    assert hidden(refused.text, "entry_id") == data["entry_id"]  # fix and resend: same key
    assert records(pipeline, "ops") == []
    (letter,) = records(pipeline, "shop.forms.sale.dlq")
    assert letter["reason"].startswith("form sale: product_id: not one of the choices")
    assert letter["origin"]["form"] == "sale" and letter["origin"]["user"] == "olga"
    assert letter["payload"]["quantity"] == "0"
    fixed = client.post(
        "/forms/sale", data=data | {"product_id": "SKU-2", "quantity": "2", "note": ""}
    )
    assert fixed.status_code == 200 and len(records(pipeline, "ops")) == 1


def test_a_viewer_sees_no_form_and_may_not_submit(client: TestClient, pipeline: Pipeline) -> None:
    login(client, user="vera")
    assert "no form for this role" in client.get("/forms").text
    assert client.get("/forms/sale").status_code == 403
    index = client.get("/forms").text
    forged = {"csrf": hidden(index, "csrf"), "entry_id": "d" * 32, "product_id": "SKU-1",
              "quantity": "1"}  # fmt: skip
    assert client.post("/forms/sale", data=forged).status_code == 403
    assert records(pipeline, "ops") == []


def test_logout_ends_the_session(client: TestClient, pipeline: Pipeline) -> None:
    login(client)
    cookie = client.cookies["tidelake_session"]
    csrf = hidden(client.get("/forms").text, "csrf")
    out = client.post("/forms/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    client.cookies.set("tidelake_session", cookie, path="/forms")  # replayed after logout
    assert client.get("/forms/sale").status_code == 401


def test_sessions_expire_and_end_with_their_account(client: TestClient, pipeline: Pipeline) -> None:
    login(client)
    assert client.get("/forms/sale").status_code == 200
    with sqlite3.connect(pipeline.state_dir / "state.db") as db:
        db.execute("UPDATE sessions SET expires_at = '2000-01-01T00:00:00+00:00'")
    assert client.get("/forms/sale").status_code == 401
    login(client)
    assert client.get("/forms/sale").status_code == 200
    Users(pipeline).remove("olga")
    assert client.get("/forms/sale").status_code == 401
    sessions = Sessions(pipeline)
    user = Users(pipeline).authenticate("vera", PASSWORD)
    assert user is not None
    token, _ = sessions.open(user)
    assert sessions.get(token) is not None and sessions.get(token + "x") is None
    with sqlite3.connect(pipeline.state_dir / "state.db") as db:  # only hashes at rest
        stored = db.execute("SELECT token_hash FROM sessions").fetchall()
    assert stored and all(token not in row[0] for row in stored)


def test_passwords_are_never_logged_or_stored(
    client: TestClient, pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        login(client)
        login(client, password="wrong horse battery")
    assert PASSWORD not in caplog.text and "wrong horse" not in caplog.text
    assert PASSWORD.encode() not in (pipeline.state_dir / "state.db").read_bytes()


def test_an_entry_the_log_refused_can_be_sent_again_and_lands_once(pipeline: Pipeline) -> None:
    app_ = create_app(pipeline)
    client = TestClient(app_)
    login(client)
    state = app_.state.tidelake
    real = state.writer.write

    def down(topic: str, values: list[bytes]) -> None:
        raise ConnectionError("broker unreachable")

    state.writer.write = down
    failed, data = sale(client)
    assert failed.status_code == 503 and "submit it again" in failed.text
    assert hidden(failed.text, "entry_id") == data["entry_id"]
    state.writer.write = real
    assert client.post("/forms/sale", data=data).status_code == 200
    assert "was already recorded" in client.post("/forms/sale", data=data).text
    assert [r["entry_id"] for r in records(pipeline, "ops")] == [data["entry_id"]]


def test_an_entry_whose_door_died_mid_write_can_be_sent_again(
    client: TestClient, pipeline: Pipeline
) -> None:
    login(client)
    page = client.get("/forms/sale").text
    data = {"csrf": hidden(page, "csrf"), "entry_id": hidden(page, "entry_id"),
            "product_id": "SKU-1", "quantity": "4"}  # fmt: skip
    then = datetime.now(UTC) - timedelta(minutes=1)
    pending = Entry(data["entry_id"], "sale", "olga", then, "pending", None, {})
    assert Entries(pipeline).claim(pending)  # claimed, then the door died before the log
    assert "was already recorded" in client.post("/forms/sale", data=data).text  # in flight?
    assert records(pipeline, "ops") == []
    with sqlite3.connect(pipeline.state_dir / "state.db") as db:
        db.execute("UPDATE entries SET entered_at = ?", ((then - STALE).isoformat(),))
    sent = client.post("/forms/sale", data=data)
    assert sent.status_code == 200 and "was already recorded" not in sent.text
    assert [r["quantity"] for r in records(pipeline, "ops")] == [4]
    assert Entries(pipeline).list("sale")[0].status == "sent"


def test_forms_entries_is_the_audit_trail(client: TestClient, pipeline: Pipeline) -> None:
    login(client)
    sale(client, quantity="7")
    sale(client, quantity="abc")
    path = str(pipeline.base_dir / "shop.yaml")
    table = CliRunner().invoke(app, ["forms", "entries", path, "sale"])
    assert table.exit_code == 0, table.output
    assert "olga" in table.output and "sent" in table.output
    assert "refused: quantity: enter a whole number" in table.output
    lines = CliRunner().invoke(app, ["forms", "entries", path, "--format", "json"]).output
    rows = [json.loads(line) for line in lines.splitlines()]
    assert [r["status"] for r in rows] == ["refused", "sent"]  # newest first
    assert rows[1]["user"] == "olga" and rows[1]["values"]["quantity"] == 7
    unknown = CliRunner().invoke(app, ["forms", "entries", path, "nope"])
    assert unknown.exit_code == 2 and "forms: sale, audit" in unknown.output


def test_choices_can_come_from_a_query(tmp_path: Path) -> None:
    query = "{choices_query: SELECT DISTINCT product_id FROM ops ORDER BY 1}"
    text = PIPELINE.replace("{label: Product, choices: [SKU-1, SKU-2]}", query)
    (tmp_path / "shop.yaml").write_text(text)
    pipeline = loads(text, tmp_path / "shop.yaml")
    Users(pipeline).add("olga", "operator", PASSWORD)
    with sqlite3.connect(tmp_path / ".tidelake" / "pipeline.db") as db:
        db.execute("CREATE TABLE ops (product_id TEXT)")
        db.executemany("INSERT INTO ops VALUES (?)", [("SKU-7",), ("SKU-3",), ("SKU-7",)])
    with TestClient(create_app(pipeline, limits=Limits(engines=1))) as client:
        login(client)
        page = client.get("/forms/sale").text
        assert "<option></option><option>SKU-3</option><option>SKU-7</option></select>" in page
        refused, _ = sale(client, product_id="SKU-1")
        assert refused.status_code == 422 and "not one of the choices" in refused.text
        assert sale(client, product_id="SKU-7")[0].status_code == 200
    assert [r["product_id"] for r in records(pipeline, "ops")] == ["SKU-7"]
