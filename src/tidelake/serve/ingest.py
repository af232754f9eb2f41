"""Request bodies -> log records for ``POST /api/ingest/{topic}``, and where they may go.

Every record is checked by ``tidelake.formats.json`` before it enters the log:
one JSON object per record, valid UTF-8, finite numbers, integers within
int64, bounded depth and size. A body with a bad record is refused whole
(400 naming the line or item), so a client can fix and resend it without
duplicating the good ones. NDJSON lines go to the log as the bytes the client
sent, so nothing is re-encoded on the hot path.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

import orjson

from tidelake.config import Pipeline
from tidelake.formats.json import check_integers, invalid_records, kind, split_lines

TOPIC = re.compile(r"^(?!__)[A-Za-z0-9][A-Za-z0-9._-]{0,248}$")
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")
_TEMPLATE = re.compile(r"\{[^}]*\}")
SHOWN_ERRORS = 5


class BadPayload(ValueError):
    """The body is not what the endpoint accepts; the message says which record and why."""


def valid_topic(name: str) -> bool:
    """Kafka's rules (letters, digits, ``._-``, at most 249 chars), minus internal ``__`` names."""
    return bool(TOPIC.match(name)) and name not in (".", "..")


def records(body: bytes, content_type: str) -> list[bytes]:
    """The records of a JSON object, JSON array of objects, or NDJSON body (``BadPayload``)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in NDJSON_TYPES:
        return _ndjson(body)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadPayload(
            f"body is not valid JSON ({e}); send an object, an array of objects, or NDJSON "
            "with Content-Type: application/x-ndjson"
        ) from None
    if isinstance(doc, dict):
        items = [doc]
    elif isinstance(doc, list):
        items = doc
    else:
        raise BadPayload(f"expected a JSON object or an array of objects, got {kind(doc)}")
    values = [orjson.dumps(item) for item in items]
    try:
        check_integers(body)
    except ValueError as e:
        raise BadPayload(str(e)) from None
    _refuse_bad(values, "item", range(len(values)))
    return values


def _ndjson(body: bytes) -> list[bytes]:
    lines, numbers = split_lines(body)
    if lines:
        _refuse_bad(lines, "line", numbers)
    return lines


def _refuse_bad(values: Sequence[bytes], what: str, labels: Sequence[int]) -> None:
    bad = invalid_records(values)
    if bad:
        shown = "; ".join(f"{what} {labels[i]}: {reason}" for i, reason in bad[:SHOWN_ERRORS])
        more = f" (and {len(bad) - SHOWN_ERRORS} more)" if len(bad) > SHOWN_ERRORS else ""
        raise BadPayload(f"{shown}{more}; nothing was written (fix them and resend the body)")


class Routes:
    """Which topics ingest may write: the write scope of every caller of the API.

    By default, the topics that flows read or write, except CDC topics (written by a
    ``cdc`` source or read by a flow that unwraps change events) and dead-letter topics.
    ``serve: {ingest: [names or glob patterns]}`` in the pipeline file (or ``patterns``, a
    named token's scope) replaces the default; a CDC or dead-letter topic is in it only when
    named exactly, never through a glob.
    """

    def __init__(self, pipeline: Pipeline, patterns: list[str] | None = None) -> None:
        flows, never = _flow_topics(pipeline)
        configured = pipeline.serve.ingest if patterns is None else patterns
        self.explicit = configured is not None
        self.allowed = list(configured) if configured is not None else flows
        self.known = flows
        self.never = never

    def check(self, topic: str) -> tuple[int, str] | None:
        """None when ``topic`` may be written, else (status, what to change)."""
        if self.explicit and topic in self.allowed:
            return None
        if _matches(topic, self.allowed) and not _matches(topic, self.never):
            return None
        shown = ", ".join(sorted(self.allowed)[:20]) or "none"
        if _matches(topic, self.never):
            return 403, (
                f"topic {topic!r} is a CDC or dead-letter topic: ingest writes it only when "
                "the pipeline file names it under serve: {ingest: [...]}"
            )
        if _matches(topic, self.known):
            return 403, f"topic {topic!r} is not in this caller's ingest scope ({shown})"
        return 404, (
            f"no flow reads or writes topic {topic!r} (ingest topics: {shown}); "
            "list more under serve: {ingest: [...]} in the pipeline file"
        )


def _matches(topic: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(topic, p) for p in patterns)


def _names(value: object) -> list[str]:
    """Topic names, ``{column}`` templates as globs; a template that is only a glob is skipped."""
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    patterns = [_TEMPLATE.sub("*", str(v)) for v in names]
    return [p for p in patterns if p.strip("*")]


def _flow_topics(pipeline: Pipeline) -> tuple[list[str], list[str]]:
    """(topics flows read or write, CDC and dead-letter topics among or beside them)."""
    flows: list[str] = []
    never: list[str] = ["*.dlq"]
    for name, flow in pipeline.flows.items():
        never.append(flow.dead_letter or f"{pipeline.name}.{name}.dlq")
        source, sink = flow.source.model_dump(), flow.sink.model_dump()
        cdc_source = source.get("type") == "cdc"
        unwraps = any(t.type == "unwrap" for t in flow.transforms)
        if cdc_source and source.get("topic_prefix"):
            never.append(f"{source['topic_prefix']}.*")
        read = _names(source.get("topic")) if source.get("type") == "topic" else []
        written = _names(sink.get("topic")) if sink.get("type") == "topic" else []
        (never if unwraps else flows).extend(read)
        (never if cdc_source else flows).extend(written)
    return flows, never


__all__ = ["NDJSON_TYPES", "BadPayload", "Routes", "records", "valid_topic"]
