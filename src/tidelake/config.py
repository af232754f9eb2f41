"""Pipeline files: YAML -> validated pydantic models; errors: ``file:line: key: problem (hint)``.

This is the only module that reads pipeline YAML or interpolates environment
variables; everything else receives typed models.
"""

from __future__ import annotations

import os
import re
import zoneinfo
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tidelake import registry
from tidelake.errors import ConfigError
from tidelake.vocabulary import ConnectorConfig, pa_type

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchSettings(_Model):
    """How big a micro-batch may grow and how long the first row may wait."""

    size: int = Field(10_000, gt=0, description="rows per batch at most")
    max_latency: float = Field(1.0, gt=0, description="seconds before a partial batch is written")


class Flow(_Model):
    """One source -> transforms -> one sink."""

    source: ConnectorConfig
    transforms: list[ConnectorConfig] = []
    sink: ConnectorConfig
    batch: BatchSettings = BatchSettings()
    workers: int = Field(
        1, ge=1, description="worker processes of `tidelake run` (one consumer group)"
    )
    dead_letter: str | None = Field(
        None, description="dead-letter topic (default: <pipeline>.<flow>.dlq)"
    )
    engine: Literal["tidelake", "spark"] = Field(
        "tidelake",
        description="what runs the flow: tidelake's own engine, or Apache Spark Structured "
        "Streaming (the pipeline's spark: block; pip install 'tidelake[spark]')",
    )
    schema_: dict[str, str] = Field(
        {},
        alias="schema",
        description="column types of the source's records, e.g. {quantity: int, ts: timestamp}; "
        "values that do not fit go to the dead-letter topic",
    )

    @field_validator("schema_")
    @classmethod
    def _types_ok(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v.values():
            try:
                pa_type(name)
            except ConfigError as e:
                raise ValueError(str(e)) from None
        return v


class Panel(_Model):
    """A dashboard panel: a query and how to draw it."""

    title: str
    sql: str
    chart: Literal[
        "line", "bar", "area", "table", "metric", "scatter", "candlestick", "heatmap"
    ] = "table"
    x: str | None = None
    y: str | list[str] | None = Field(
        None, description="candlestick: lines drawn over the candles; heatmap: the row column"
    )
    by: str | None = Field(None, description="candlestick: one chart per value (a symbol)")
    color: str | None = Field(None, description="heatmap: the column that colours a cell")


class TokenSettings(_Model):
    """A named API token's scope; its secret is the env var TIDELAKE_API_TOKEN_<NAME>."""

    ingest: list[str] = Field(
        [],
        description="topics (names or glob patterns) this token may ingest into "
        "(CDC and dead-letter topics only when named exactly)",
    )


class Schedule(_Model):
    """A job ``tidelake run`` starts whenever its cron expression comes due."""

    cron: str = Field(
        description="minute hour day-of-month month day-of-week (UTC); a 6th field: seconds"
    )
    flow: str | None = Field(None, description="a batch flow (finite source) run to its end")
    compact: list[str] = Field([], description="lake tables to compact")

    @field_validator("cron")
    @classmethod
    def _cron_ok(cls, v: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a cron expression (e.g. '*/5 * * * *': every 5 min)")
        return v

    @model_validator(mode="after")
    def _one_job(self) -> Schedule:
        if bool(self.flow) == bool(self.compact):
            raise ValueError("give a `flow` to run or lake tables to `compact`, one of them")
        return self


class ServeSettings(_Model):
    """What ``tidelake serve`` lets clients do beyond reading."""

    ingest: list[str] | None = Field(
        None,
        description="topics (names or glob patterns) POST /api/ingest may write "
        "(default: topics flows read or write, except CDC and dead-letter topics)",
    )
    tokens: dict[str, TokenSettings] = Field(
        {},
        description="named API tokens, each with its own ingest scope "
        "(secret: env var TIDELAKE_API_TOKEN_<NAME>)",
    )
    session_minutes: int = Field(
        480, gt=0, le=7 * 24 * 60, description="how long an operator's login lasts"
    )


STAMPS = ("entry_id", "entered_by", "entered_at")
"""Columns the form door adds to every entry: its idempotency key, the operator, the time."""


class FormField(_Model):
    """One input of an operator form."""

    label: str | None = Field(None, description="what the form shows (default: the name)")
    type: Literal["text", "integer", "number", "boolean", "date"] = "text"
    required: bool = True
    choices: list[str | int] | None = Field(None, description="the only values accepted")
    choices_query: str | None = Field(
        None,
        description="a read-only SELECT whose first column lists the values accepted "
        "(e.g. SELECT DISTINCT product_id FROM operations ORDER BY 1)",
    )
    min: float | None = Field(None, description="integer/number: smallest value accepted")
    max: float | None = Field(None, description="integer/number: largest value accepted")
    max_length: int = Field(200, gt=0, description="text: longest value accepted")

    @model_validator(mode="after")
    def _consistent(self) -> FormField:
        if self.choices is not None and self.choices_query is not None:
            raise ValueError("give `choices` or `choices_query`, not both")
        if (self.min is not None or self.max is not None) and self.type not in (
            "integer",
            "number",
        ):
            raise ValueError(f"min/max apply to integer and number fields, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        return self


class Form(_Model):
    """An operator form: its entries, stamped with who entered them and when, go to a topic."""

    title: str
    topic: str = Field(description="where entries go (a flow reads it)")
    fields: dict[str, FormField]
    roles: list[Literal["viewer", "operator", "admin"]] = Field(
        ["operator", "admin"], description="who may use it (users' roles)"
    )
    dead_letter: str | None = Field(
        None, description="where refused entries go (default: <pipeline>.forms.<form>.dlq)"
    )

    @field_validator("topic")
    @classmethod
    def _topic_ok(cls, v: str) -> str:
        if not re.fullmatch(r"(?!__)[A-Za-z0-9][A-Za-z0-9._-]{0,248}", v):
            raise ValueError("topic names use letters, digits, '.', '_' or '-' (not '__...')")
        return v

    @field_validator("fields")
    @classmethod
    def _names_ok(cls, v: dict[str, FormField]) -> dict[str, FormField]:
        if not v:
            raise ValueError("a form needs at least one field")
        for name in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"field {name!r}: use letters, digits and '_'")
            if name in STAMPS:
                raise ValueError(f"field {name!r}: the form door adds it to every entry")
        return v


class SparkSettings(_Model):
    """Where flows with ``engine: spark`` run (tidelake.spark)."""

    master: str = Field("local[*]", description="local[N], spark://host:7077, k8s://...")
    conf: dict[str, str] = Field({}, description="any Spark settings, e.g. spark.executor.memory")
    checkpoint: str | None = Field(
        None,
        description="checkpoint location of the streaming queries, a path or s3:// (default: "
        "<lake>/_spark_checkpoints/<pipeline> when the lake is on S3, else "
        "<state>/spark/checkpoints)",
    )


class Pipeline(_Model):
    """A pipeline file: where the log, database and lake live, and the flows between them."""

    name: str
    broker: str = "embedded"
    database: str = "sqlite:///.tidelake/pipeline.db"
    lake: str = "file://.tidelake/lake"
    lake_catalog: str | None = Field(
        None, description="catalog URL (default: SQLite beside the lake)"
    )
    init_sql: list[str] = Field(
        [], description="SQL files run against the database before flows start (idempotent DDL)"
    )
    flows: dict[str, Flow]
    schedules: dict[str, Schedule] = Field(
        {}, description="jobs run on cron schedules while `tidelake run` runs"
    )
    on_failure: Literal["continue", "stop-all"] = Field(
        "continue", description="when a flow fails: the others go on, or all stop"
    )
    queries: dict[str, str] = {}
    dashboard: list[Panel] = []
    serve: ServeSettings = ServeSettings()
    forms: dict[str, Form] = Field(
        {}, description="operator forms: the dashboard and /forms show them after a login"
    )
    spark: SparkSettings = SparkSettings()
    time_zone: str = Field(
        "UTC", description="IANA time zone the dashboard draws times in (e.g. Europe/Paris)"
    )
    base_dir: Path = Field(Path("."), exclude=True, description="directory of the pipeline file")

    @field_validator("time_zone")
    @classmethod
    def _zone_ok(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r} (use an IANA name such as UTC or Europe/Paris)"
            ) from None
        return v

    @model_validator(mode="after")
    def _scheduled_flows_exist(self) -> Pipeline:
        for name, job in self.schedules.items():
            if job.flow and job.flow not in self.flows:
                raise ValueError(
                    f"schedules.{name}: no flow {job.flow!r} (flows: {', '.join(self.flows)})"
                )
        return self

    @model_validator(mode="after")
    def _form_names_ok(self) -> Pipeline:
        for name in self.forms:
            if not _NAME.match(name):
                raise ValueError(f"forms.{name}: use letters, digits, '_', '-' or '.'")
        return self

    def scheduled(self) -> set[str]:
        """Flows that run on a schedule, not continuously."""
        return {job.flow for job in self.schedules.values() if job.flow}

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use letters, digits, '_', '-' or '.' and start with a letter")
        return v

    def path(self, p: str | Path) -> Path:
        """A path from the pipeline file, relative to the file's directory."""
        p = Path(p).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def url(self, url: str) -> str:
        """Resolve relative ``sqlite:///``, ``file://``, ``embedded:///`` URLs against the file."""
        for scheme in ("sqlite:///", "file://", "embedded:///"):
            if url.startswith(scheme):
                rest = url[len(scheme) :]
                if rest.startswith("/") or rest == ":memory:":
                    return url
                return scheme + str(self.path(rest).resolve())
        if url == "embedded":
            return "embedded:///" + str(self.path(".tidelake/log.db").resolve())
        return url

    @property
    def state_dir(self) -> Path:
        return self.path(".tidelake")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset VAR without default is an error."""
    env = dict(os.environ) if env is None else env

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is None:
            raise KeyError(name)
        return default

    return _VAR.sub(sub, text)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key and sequence item."""


def key_lines(text: str) -> dict[tuple[Any, ...], int]:
    """The 1-based line of every key and list item of a YAML text, by path (empty if invalid)."""
    lines: dict[tuple[Any, ...], int] = {}
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError:
        return lines
    if node is not None:
        _walk_lines(node, (), lines)
    return lines


def _walk_lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = path + (k.value,)
            out[key] = k.start_mark.line + 1
            _walk_lines(v, key, out)
            out[key] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk_lines(item, path + (i,), out)


def _interpolate_tree(
    obj: Any, path: tuple[Any, ...], problems: list[tuple[tuple[Any, ...], str]]
) -> Any:
    if isinstance(obj, dict):
        return {k: _interpolate_tree(v, path + (k,), problems) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_interpolate_tree(v, path + (i,), problems) for i, v in enumerate(obj)]
    if isinstance(obj, str) and "${" in obj:
        try:
            value = interpolate(obj)
        except KeyError as e:
            problems.append(
                (
                    path,
                    f"environment variable {e.args[0]} is not set "
                    f"(set it, or give a default: ${{{e.args[0]}:-value}})",
                )
            )
            return obj
        if _VAR.fullmatch(obj):  # a whole-value variable is typed like YAML: 200 -> int
            try:  # ... null -> None; what is no YAML scalar (a cron's */5) stays a string
                typed = yaml.safe_load(value) if value.strip() else None
            except yaml.YAMLError:
                return value
            return typed if not isinstance(typed, dict | list) else value
        return value
    return obj


def _closest_line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def _validate_connector(
    kind: registry.Kind, raw: Any, loc: tuple[Any, ...], errors: list[tuple[tuple[Any, ...], str]]
) -> ConnectorConfig | None:
    if not isinstance(raw, dict) or "type" not in raw:
        errors.append((loc, f"a {kind} needs a 'type' (one of: {', '.join(registry.names(kind))})"))
        return None
    try:
        cls: Any = registry.lookup(kind, str(raw["type"]))
    except ConfigError as e:
        errors.append((loc + ("type",), str(e)))
        return None
    try:
        model: ConnectorConfig = cls.Config.model_validate(raw)
        return model
    except ValidationError as e:
        for err in e.errors():
            errors.append((loc + tuple(err["loc"]), _describe(err)))
        return None


def _describe(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (remove it or check its spelling)"
    if err["type"] == "missing":
        return "required key is missing"
    return str(err["msg"])


def load(path: str | Path) -> Pipeline:
    """Read and validate a pipeline file; every problem found is reported at once."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read pipeline file: {e.strerror}") from e
    return loads(text, path)


def loads(text: str, path: Path = Path("<pipeline>")) -> Pipeline:
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ConfigError(f"{path}:{line}: invalid YAML: {getattr(e, 'problem', e)}") from e
    if node is None or not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            f"{path}:1: a pipeline file is a mapping with at least 'name' and 'flows'"
        )
    lines: dict[tuple[Any, ...], int] = {}
    _walk_lines(node, (), lines)
    raw = yaml.load(text, Loader=yaml.SafeLoader)
    errors: list[tuple[tuple[Any, ...], str]] = []
    raw = _interpolate_tree(raw, (), errors)

    flows = raw.get("flows") if isinstance(raw, dict) else None
    if isinstance(flows, dict):
        for fname, flow in flows.items():
            if not isinstance(flow, dict):
                continue
            floc = ("flows", fname)
            if not _NAME.match(str(fname)):
                errors.append((floc, "flow names use letters, digits, '_', '-' or '.'"))
            for kind, key in (("source", "source"), ("sink", "sink")):
                if key in flow:
                    flow[key] = _validate_connector(kind, flow[key], floc + (key,), errors)  # type: ignore[arg-type]
            if isinstance(flow.get("transforms"), list):
                flow["transforms"] = [
                    _validate_connector("transform", t, floc + ("transforms", i), errors)
                    for i, t in enumerate(flow["transforms"])
                ]
    if not errors:
        try:
            pipeline = Pipeline.model_validate(raw)
        except ValidationError as e:
            errors += [(tuple(err["loc"]), _describe(err)) for err in e.errors()]
    if errors:
        msgs = [
            f"{path}:{_closest_line(lines, loc)}: {'.'.join(map(str, loc)) or '<root>'}: {msg}"
            for loc, msg in errors
        ]
        raise ConfigError("\n".join(msgs))
    pipeline.base_dir = path.parent.resolve()
    return pipeline
