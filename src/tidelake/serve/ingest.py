"""Request bodies -> log records for ``POST /api/ingest/{topic}``.

NDJSON is split into lines as bytes and validated in bulk by Arrow's JSON
reader (every line must be a JSON object); only when that fails are lines
parsed one by one, to name the first bad line. Records go to the log as the
bytes the client sent, so nothing is re-encoded on the hot path.
"""

from __future__ import annotations

import io
import re

import orjson
import pyarrow as pa
import pyarrow.json as pj

TOPIC = re.compile(r"^(?!__)[A-Za-z0-9][A-Za-z0-9._-]{0,248}$")
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")


class BadPayload(ValueError):
    """The body is not what the endpoint accepts; the message says which record and why."""


def valid_topic(name: str) -> bool:
    """Kafka's rules (letters, digits, ``._-``, at most 249 chars), minus internal ``__`` names."""
    return bool(TOPIC.match(name)) and name not in (".", "..")


def records(body: bytes, content_type: str) -> list[bytes]:
    """The records of a JSON object, JSON array of objects, or NDJSON body."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in NDJSON_TYPES:
        return _ndjson(body)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadPayload(
            "body is not valid JSON (send an object, an array of objects, or NDJSON with "
            "Content-Type: application/x-ndjson)"
        ) from None
    if isinstance(doc, dict):
        return [orjson.dumps(doc)]
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            if not isinstance(item, dict):
                raise BadPayload(f"item {i}: expected a JSON object, got {_kind(item)}")
        return [orjson.dumps(item) for item in doc]
    raise BadPayload(f"expected a JSON object or an array of objects, got {_kind(doc)}")


def _ndjson(body: bytes) -> list[bytes]:
    raw = body.split(b"\n")
    lines = [line.rstrip(b"\r") for line in raw if line.strip()]
    if not lines:
        return []
    try:
        opts = pj.ReadOptions(block_size=max(len(body) + 1, 1 << 20), use_threads=True)
        table = pj.read_json(io.BytesIO(b"\n".join(lines)), read_options=opts)
        if table.num_rows == len(lines):
            return lines
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    for number, line in enumerate(raw, start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise BadPayload(f"line {number}: invalid JSON ({e.msg})") from None
        if not isinstance(item, dict):
            raise BadPayload(f"line {number}: expected a JSON object, got {_kind(item)}")
    return lines


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
    }.get(type(value), type(value).__name__)


__all__ = ["NDJSON_TYPES", "BadPayload", "records", "valid_topic"]
