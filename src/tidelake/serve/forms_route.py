"""``/forms``: the operator forms as HTML pages behind a login (``tidelake.serve.forms``).

A user of the pipeline (``tidelake users add``) logs in at ``/forms`` with name and
password, on loopback too; the session is a cookie (``HttpOnly``, ``SameSite=Strict``,
``Secure`` when the server binds beyond loopback, so it then needs TLS in front) that
expires with the session (``serve: {session_minutes}``). Every POST carries a CSRF token:
the login page's is bound to a pre-login cookie, the forms' to the session. The forms page
lists the forms the user's role may use; each form carries a fresh idempotency key, so a
retried POST or a double click lands once. Pages are never cached, never framed, and load
nothing from elsewhere.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Mapping
from html import escape
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tidelake.config import Form
from tidelake.errors import ConnectorError
from tidelake.serve.forms import Desk, FormRefused, new_key
from tidelake.serve.state import ApiState
from tidelake.serve.users import Session, Sessions, Users

SESSION_COOKIE = "tidelake_session"
LOGIN_COOKIE = "tidelake_login"
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
}
_STYLE = (
    "body{font-family:sans-serif;max-width:40em;margin:2em auto}label{display:block;"
    "margin:.6em 0}.error{color:#b00}.ok{color:#070}"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def _hidden(name: str, value: str) -> str:
    return f"<input type='hidden' name='{name}' value='{escape(value)}'>"


def _input(name: str, form: Form, choices: list[Any] | None, value: Any, error: str) -> str:
    spec = form.fields[name]
    label = escape(spec.label or name)
    shown = "" if value is None else escape(str(value))
    required = " required" if spec.required and spec.type != "boolean" else ""
    if choices is not None:
        options = "".join(
            f"<option{' selected' if str(c) == str(value) else ''}>{escape(str(c))}</option>"
            for c in choices
        )
        widget = f"<select name='{name}'{required}><option></option>{options}</select>"
    elif spec.type == "boolean":
        checked = " checked" if value else ""
        widget = f"<input type='checkbox' name='{name}' value='true'{checked}>"
    else:
        kind = {"integer": "number", "number": "number", "date": "date"}.get(spec.type, "text")
        bounds = "".join(
            f" {k}='{v:g}'" for k, v in (("min", spec.min), ("max", spec.max)) if v is not None
        )
        step = " step='any'" if spec.type == "number" else ""
        widget = f"<input type='{kind}' name='{name}' value='{shown}'{bounds}{step}{required}>"
    problem = f" <span class='error'>{escape(error)}</span>" if error else ""
    return f"<label>{label} {widget}{problem}</label>"


def add_routes(app: FastAPI, state: ApiState, secure: bool) -> None:
    """The form pages of one app; ``secure``: its cookies go over HTTPS only."""
    users, sessions = Users(state.pipeline), Sessions(state.pipeline)
    desk = Desk(state.pipeline, state.produce, lambda sql: state.pool.select(sql, 10_001))

    def cookie(response: Response, name: str, value: str, max_age: int) -> Response:
        response.set_cookie(
            name, value, max_age=max_age, path="/forms", secure=secure, httponly=True,
            samesite="strict",
        )  # fmt: skip
        return response

    def session_of(request: Request) -> tuple[str, Session | None]:
        token = request.cookies.get(SESSION_COOKIE, "")
        return token, sessions.get(token) if token else None

    async def fields(request: Request) -> dict[str, str]:
        body = (await request.body()).decode("utf-8", "replace")
        return dict(parse_qsl(body, keep_blank_values=True))

    def login_page(problem: str = "", status: int = 200) -> Response:
        nonce = secrets.token_urlsafe(24)
        error = f"<p class='error'>{escape(problem)}</p>" if problem else ""
        body = (
            f"{error}<form method='post' action='/forms/login'>{_hidden('csrf', nonce)}"
            "<label>User <input name='user' autocomplete='username' required></label>"
            "<label>Password <input name='password' type='password' "
            "autocomplete='current-password' required></label><button>Log in</button></form>"
        )
        return cookie(_page("Log in", body, status), LOGIN_COOKIE, nonce, 600)

    def form_page(
        name: str,
        session: Session,
        key: str,
        values: Mapping[str, Any] | None = None,
        errors: Mapping[str, str] | None = None,
        note: str = "",
        status: int = 200,
    ) -> Response:
        form = desk.form(name, session)
        choices = desk.choices(form)
        values, errors = values or {}, errors or {}
        inputs = "".join(
            _input(f, form, choices.get(f), values.get(f), errors.get(f, "")) for f in form.fields
        )
        stale = errors.get("entry_id", "")
        body = (
            f"{note}{f'<p class=error>{escape(stale)}</p>' if stale else ''}"
            f"<form method='post' action='/forms/{escape(name)}'>{_hidden('csrf', session.csrf)}"
            f"{_hidden('entry_id', key)}{inputs}<button>Submit</button></form>"
            f"<p><a href='/forms'>All forms</a></p>"
        )
        return _page(form.title, body, status)

    @app.get("/forms", include_in_schema=False)
    def forms_index(request: Request) -> Response:
        _, session = session_of(request)
        if session is None:
            return login_page()
        links = "".join(
            f"<li><a href='/forms/{escape(n)}'>{escape(state.pipeline.forms[n].title)}</a></li>"
            for n in desk.allowed(session)
        )
        body = (
            f"<p>Logged in as {escape(session.user)} ({session.role}).</p>"
            f"<ul>{links or '<li>no form for this role</li>'}</ul>"
            f"<form method='post' action='/forms/logout'>{_hidden('csrf', session.csrf)}"
            "<button>Log out</button></form>"
        )
        return _page("Forms", body)

    @app.post("/forms/login", include_in_schema=False)
    async def forms_login(request: Request) -> Response:
        data = await fields(request)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not hmac.compare_digest(nonce, data.get("csrf", "")):
            return login_page("The login form expired: log in again.", 403)
        user = await run_in_threadpool(
            users.authenticate, data.get("user", ""), data.get("password", "")
        )
        if user is None:
            return login_page("Wrong user name or password.", 401)
        token, session = sessions.open(user)
        response = RedirectResponse("/forms", status_code=303, headers=_HEADERS)
        response.delete_cookie(LOGIN_COOKIE, path="/forms")
        ttl = max(int(session.expires_at.timestamp() - time.time()), 1)
        return cookie(response, SESSION_COOKIE, token, ttl)

    @app.post("/forms/logout", include_in_schema=False)
    async def forms_logout(request: Request) -> Response:
        data = await fields(request)
        token, session = session_of(request)
        if session is not None and hmac.compare_digest(session.csrf, data.get("csrf", "")):
            sessions.close(token)
        response = RedirectResponse("/forms", status_code=303, headers=_HEADERS)
        response.delete_cookie(SESSION_COOKIE, path="/forms")
        return response

    @app.get("/forms/{name}", include_in_schema=False)
    def form_get(name: str, request: Request) -> Response:
        _, session = session_of(request)
        if session is None:
            return login_page("Log in to use the forms.", 401)
        try:
            return form_page(name, session, new_key())
        except FormRefused as e:
            return _page("Forms", f"<p class='error'>{escape(str(e))}</p>", 403)

    @app.post("/forms/{name}", include_in_schema=False)
    async def form_post(name: str, request: Request) -> Response:
        data = await fields(request)
        _, session = session_of(request)
        if session is None:
            return login_page("Your session ended: log in again (nothing was recorded).", 401)
        if not hmac.compare_digest(session.csrf, data.get("csrf", "")):
            return _page("Forms", "<p class='error'>Bad CSRF token: reload the form.</p>", 403)
        key = data.get("entry_id", "")
        try:
            outcome = await run_in_threadpool(desk.submit, name, session, key, data)
        except FormRefused as e:
            return _page("Forms", f"<p class='error'>{escape(str(e))}</p>", 403)
        except ConnectorError as e:
            note = f"<p class='error'>{escape(str(e))}</p>"
            return form_page(name, session, key, data, note=note, status=503)
        if outcome.errors:
            note = "<p class='error'>Nothing was recorded: fix the fields below.</p>"
            return form_page(name, session, key, data, outcome.errors, note, 422)
        when = outcome.entry.entered_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        done = "was already recorded" if outcome.duplicate else "recorded"
        note = f"<p class='ok'>Entry {escape(key)} {done} ({when}).</p>"
        return form_page(name, session, new_key(), note=note)


__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "add_routes"]
