"""The dashboard's operator side: log in and out in the sidebar, then the forms the user's
role allows, each submitted through ``tidelake.serve.forms.Desk`` (the /forms pages' path).

The session token stays on the server, in the Streamlit session (never in the browser), and
is checked against the state database on every run: it ends at logout, when the account is
removed or when it expires; a page reload asks for the login again. A form keeps its
idempotency key until the operator changes a value or asks for a new entry, so submitting
the same entry twice (a double click) lands once.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import streamlit as st

from tidelake.config import Form, Pipeline
from tidelake.errors import ConnectorError
from tidelake.serve.forms import Desk, new_key
from tidelake.serve.users import Session, Sessions, Users

_TOKEN = "operator-token"


def login(pipeline: Pipeline) -> Session | None:
    """The sidebar's login form, or who is logged in and a logout button."""
    sessions = Sessions(pipeline)
    token = st.session_state.get(_TOKEN, "")
    session = sessions.get(token) if token else None
    with st.sidebar:
        if session is None:
            st.session_state.pop(_TOKEN, None)
            with st.form("login", clear_on_submit=True):
                st.markdown("**Operator login**")
                user = st.text_input("User", autocomplete="username")
                password = st.text_input("Password", type="password")
                if st.form_submit_button("Log in"):
                    account = Users(pipeline).authenticate(user, password)
                    if account is None:
                        st.error("Wrong user name or password.")
                    else:
                        st.session_state[_TOKEN], session = sessions.open(account)
            if session is None:
                return None
        st.markdown(f"Logged in as **{session.user}** ({session.role})")
        if st.button("Log out", key="logout"):
            sessions.close(st.session_state.pop(_TOKEN))
            st.rerun()
    return session


def _widget(form: Form, name: str, choices: list[Any] | None, key: str) -> Any:
    spec = form.fields[name]
    label = spec.label or name
    if choices is not None:
        return st.selectbox(label, choices, index=None, key=key)
    if spec.type == "boolean":
        return st.checkbox(label, key=key)
    if spec.type in ("integer", "number"):
        step: Any = 1 if spec.type == "integer" else 0.01
        cast = int if spec.type == "integer" else float
        low = None if spec.min is None else cast(spec.min)
        high = None if spec.max is None else cast(spec.max)
        return st.number_input(label, low, high, None, step, key=key)
    if spec.type == "date":
        value: date | None = st.date_input(label, None, key=key)
        return value
    return st.text_input(label, max_chars=spec.max_length, key=key)


def forms(desk: Desk, session: Session) -> None:
    """Each form the session's role allows, in a tab of its own."""
    names = desk.allowed(session)
    if not names:
        st.info(f"No form for role {session.role}.")
        return
    for name, tab in zip(
        names, st.tabs([desk.pipeline.forms[n].title for n in names]), strict=True
    ):
        with tab:
            _form(desk, session, name)


def _form(desk: Desk, session: Session, name: str) -> None:
    form = desk.form(name, session)
    entry = st.session_state.setdefault(f"entry-{name}", {"key": new_key(), "sent": None, "n": 0})
    try:
        choices = desk.choices(form)
    except Exception as e:  # noqa: BLE001 - a choices query that fails must not break the page
        st.warning(f"{form.title}: its choices are not available yet ({e})")
        return
    with st.form(f"form-{name}-{entry['n']}"):
        values = {
            f: _widget(form, f, choices.get(f), f"{name}-{f}-{entry['n']}") for f in form.fields
        }
        submitted = st.form_submit_button("Submit")
    if st.button("New entry", key=f"new-{name}"):
        entry.update(key=new_key(), sent=None, n=entry["n"] + 1)
        st.rerun()
    if not submitted:
        return
    if entry["sent"] is not None and entry["sent"] != values:  # another entry
        entry.update(key=new_key(), sent=None)
    try:
        outcome = desk.submit(name, session, entry["key"], values)
    except ConnectorError as e:
        st.error(str(e))
        return
    if outcome.errors:
        st.error("Nothing was recorded: " + "; ".join(
            f"{form.fields[f].label or f if f in form.fields else f}: {why}"
            for f, why in outcome.errors.items()
        ))  # fmt: skip
        return
    entry["sent"] = values
    done = "was already recorded" if outcome.duplicate else "recorded"
    st.success(f"Entry {outcome.entry.entry_id} {done} by {session.user}.")


__all__ = ["forms", "login"]
