"""Operator forms (``forms:`` in the pipeline file): the one submit path of every door.

A submission is checked field by field (type, required, choices, min/max, length); a valid
one is stamped with ``entry_id`` (its idempotency key), ``entered_by`` (the operator) and
``entered_at`` (UTC, ISO 8601), claimed in the state database under its key, then appended
to the form's topic: the same key lands once, however often it is submitted (a double click,
a retried POST). A refused submission writes nothing to the topic: the operator sees each
field's problem, and a dead letter (reason, origin: form and user, payload) goes to the
form's dead-letter topic. An entry the log could not take is marked failed and may be sent
again with the same key. A flow that upserts by ``entry_id`` lands every entry exactly once.
Every entry, with its status, is in the audit trail (``tidelake forms entries``).

The HTTP door is ``forms_route``; the dashboard calls ``Desk`` directly.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pyarrow as pa

from tidelake.config import Form, FormField, Pipeline
from tidelake.errors import ConnectorError, TidelakeError
from tidelake.serve.users import Entries, Entry, Session

KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_CHOICES = 1000
_TRUE, _FALSE = ("true", "on", "1", "yes"), ("false", "off", "0", "no", "")


class FormRefused(TidelakeError):
    """The user may not use the form, or there is no such form (the message says which)."""


@dataclass
class Outcome:
    """What became of one submission: the entry, whether its key had landed before, and the
    problems by field when it was refused."""

    entry: Entry
    duplicate: bool = False
    errors: dict[str, str] = field(default_factory=dict)


def new_key() -> str:
    """A fresh idempotency key (what a door puts in the form it shows)."""
    return uuid.uuid4().hex


def dead_letter_topic(pipeline: Pipeline, name: str) -> str:
    return pipeline.forms[name].dead_letter or f"{pipeline.name}.forms.{name}.dlq"


def parse(spec: FormField, raw: Any, allowed: list[Any] | None) -> Any:
    """The value of one field from what a door sent (``ValueError`` says what is wrong)."""
    text = raw.strip() if isinstance(raw, str) else raw
    if spec.type == "boolean":
        if isinstance(text, bool):
            return text
        if text is None or str(text).lower() in _FALSE:
            return False
        if str(text).lower() in _TRUE:
            return True
        raise ValueError("choose yes or no")
    if text is None or text == "":
        if spec.required:
            raise ValueError("required")
        return None
    value: Any
    if spec.type == "integer":
        whole = isinstance(text, float) and text.is_integer()
        digits = isinstance(text, str) and re.fullmatch(r"[+-]?\d{1,19}", text)
        integer = isinstance(text, int) and not isinstance(text, bool)
        value = int(text) if whole or digits or integer else None
        if value is None or abs(value) >= 2**63:
            raise ValueError("enter a whole number")
    elif spec.type == "number":
        try:
            value = float(text)
        except ValueError:
            raise ValueError("enter a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("enter a finite number")
    elif spec.type == "date":
        try:
            value = (text if isinstance(text, date) else date.fromisoformat(str(text))).isoformat()
        except ValueError:
            raise ValueError("enter a date as YYYY-MM-DD") from None
    else:
        value = str(text)
        if len(value) > spec.max_length:
            raise ValueError(f"at most {spec.max_length} characters")
    if spec.min is not None and value < spec.min:
        raise ValueError(f"at least {spec.min:g}")
    if spec.max is not None and value > spec.max:
        raise ValueError(f"at most {spec.max:g}")
    if allowed is not None and str(value) not in {str(a) for a in allowed}:
        raise ValueError("not one of the choices")
    return value


class Desk:
    """The forms of one pipeline behind one log writer and one query runner."""

    def __init__(
        self,
        pipeline: Pipeline,
        produce: Callable[[str, list[bytes]], None],
        select: Callable[[str], pa.Table],
    ) -> None:
        self.pipeline = pipeline
        self.produce = produce
        self.select = select
        self.entries = Entries(pipeline)

    def allowed(self, session: Session) -> list[str]:
        """The forms ``session``'s role may use, in file order."""
        return [n for n, f in self.pipeline.forms.items() if session.role in f.roles]

    def form(self, name: str, session: Session) -> Form:
        form = self.pipeline.forms.get(name)
        if form is None or session.role not in form.roles:
            raise FormRefused(f"no form {name!r} for {session.user} ({session.role})")
        return form

    def choices(self, form: Form) -> dict[str, list[Any]]:
        """Each field's accepted values, its query run now (fields without choices absent)."""
        out: dict[str, list[Any]] = {}
        for name, spec in form.fields.items():
            if spec.choices is not None:
                out[name] = list(spec.choices)
            elif spec.choices_query is not None:
                result = self.select(spec.choices_query)
                out[name] = result.column(0).to_pylist()[:MAX_CHOICES] if result.num_columns else []
        return out

    def submit(self, name: str, session: Session, key: str, raw: Mapping[str, Any]) -> Outcome:
        """Check, stamp and send one entry of form ``name`` (see the module's docstring);
        ``ConnectorError`` when the log refused it (the entry is failed: send it again)."""
        form = self.form(name, session)
        allowed = self.choices(form)
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for field_name, spec in form.fields.items():
            try:
                values[field_name] = parse(spec, raw.get(field_name), allowed.get(field_name))
            except ValueError as e:
                errors[field_name] = str(e)
        if not KEY.match(key):
            errors["entry_id"] = "missing or malformed idempotency key: reload the form"
        now = datetime.now(UTC)
        if errors:
            return self._refuse(name, session, raw, errors, now)
        record = values | {
            "entry_id": key,
            "entered_by": session.user,
            "entered_at": now.isoformat().replace("+00:00", "Z"),
        }
        entry = Entry(key, name, session.user, now, "pending", None, record)
        if not self.entries.claim(entry):
            return Outcome(self.entries.list(entry_id=key)[0], duplicate=True)
        try:
            self.produce(form.topic, [orjson.dumps(record)])
        except Exception as e:
            self.entries.finish(key, "failed", str(e)[:500])
            raise ConnectorError(
                f"the entry could not be written to {form.topic!r}; submit it again ({e})"
            ) from e
        self.entries.finish(key, "sent")
        return Outcome(self.entries.list(entry_id=key)[0])

    def _refuse(
        self,
        name: str,
        session: Session,
        raw: Mapping[str, Any],
        errors: dict[str, str],
        now: datetime,
    ) -> Outcome:
        reason = "; ".join(f"{k}: {v}" for k, v in errors.items())
        payload = {k: raw.get(k) for k in self.pipeline.forms[name].fields}
        entry = Entry(new_key(), name, session.user, now, "refused", reason, payload)
        self.entries.record(entry)
        letter = {
            "flow": None,
            "reason": f"form {name}: {reason}",
            "origin": {"form": name, "user": session.user, "entry_id": entry.entry_id},
            "payload": payload,
        }
        try:
            self.produce(
                dead_letter_topic(self.pipeline, name), [orjson.dumps(letter, default=str)]
            )
        except Exception as e:  # the operator still sees the problems; the audit keeps it
            self.entries.finish(
                entry.entry_id, "refused", f"{reason} (dead letter not written: {e})"
            )
        return Outcome(entry, errors=errors)


__all__ = ["KEY", "Desk", "FormRefused", "Outcome", "dead_letter_topic", "new_key", "parse"]
