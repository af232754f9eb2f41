"""The pipeline-file reference, generated from the pydantic models (nothing written by hand).

``json_schema`` is what ``tidelake schema`` prints for editors (the YAML language server
completes and checks pipeline files with it); ``markdown`` is the README's connector tables,
which a test keeps equal to it. Both list every connector of ``registry`` whose extra is
installed, with the ``Field`` descriptions of its config.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, create_model
from pydantic_core import PydanticUndefined

from tidelake import registry
from tidelake.config import Flow, Pipeline
from tidelake.errors import ConfigError

KINDS: tuple[registry.Kind, ...] = ("source", "transform", "sink")
_VARIABLE = {"type": "string", "pattern": r"\$\{", "description": "${VAR} or ${VAR:-default}"}


def connectors(kind: registry.Kind) -> tuple[dict[str, Any], list[str]]:
    """Name -> connector class, for those that import; and the names skipped (extra missing)."""
    found, skipped = {}, []
    for name in registry.names(kind):
        try:
            found[name] = registry.lookup(kind, name)
        except ConfigError:
            skipped.append(name)
    return found, skipped


def _union(kind: registry.Kind) -> Any:
    configs = tuple(cls.Config for cls in connectors(kind)[0].values())
    return Annotated[Union[configs], Field(discriminator="type")]  # noqa: UP007


def json_schema() -> dict[str, Any]:
    """JSON Schema of a pipeline file; every non-string value may also be a ``${VAR}``."""
    source, transform, sink = (_union(k) for k in KINDS)
    flow = create_model(
        "Flow",
        __base__=Flow,
        __doc__=Flow.__doc__,
        source=(source, ...),
        transforms=(list[transform], []),  # type: ignore[valid-type]
        sink=(sink, ...),
    )
    pipeline = create_model(
        "Pipeline", __base__=Pipeline, __doc__=Pipeline.__doc__, flows=(dict[str, flow], ...)
    )
    schema = pipeline.model_json_schema()
    schema["properties"].pop("base_dir", None)
    _allow_variables(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tidelake pipeline file"
    return schema


def _allow_variables(node: Any) -> None:
    """Let ``${VAR}`` stand for any value that is not free text already (it is substituted
    before validation), except the ``type`` that picks a connector."""
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            if name != "type" and isinstance(prop, dict) and not _any_text(prop):
                node["properties"][name] = {"anyOf": [prop, _VARIABLE]} | {
                    k: prop[k] for k in ("description", "default", "title") if k in prop
                }
        for value in node.values():
            _allow_variables(value)
    elif isinstance(node, list):
        for value in node:
            _allow_variables(value)


def _any_text(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "string" and not {"enum", "const", "pattern", "format"} & set(prop)


def _summary(cls: Any, shared: bool) -> str:
    """The module's first paragraph, or the class's where a module holds several connectors."""
    module = sys.modules[cls.__module__].__doc__
    doc = (cls.__doc__ if shared else module or cls.__doc__) or ""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    first = re.sub(r"^``\w+``( (sink|source|transform))?: ", "", first)
    first = first[:1].upper() + first[1:]
    return first.replace("``", "`").replace("|", "\\|")


def _keys(config: type[BaseModel]) -> str:
    out = []
    for name, field in config.model_fields.items():
        if name == "type" or field.exclude:
            continue
        text = f"`{name}`"
        if field.is_required():
            text += " (required)"
        if field.description:
            text += f": {field.description}"
        default = field.default
        if default not in (PydanticUndefined, None, "", [], {}) and not field.is_required():
            text += "" if isinstance(default, BaseModel) else f" (default `{default}`)"
        out.append(text.replace("|", "\\|"))
    return "<br>".join(out) or "—"


def markdown() -> str:
    """The connector tables of the README: one per kind, one row per connector."""
    parts = []
    found = {kind: connectors(kind)[0] for kind in KINDS}
    modules = Counter(c.__module__ for kind in KINDS for c in found[kind].values())
    for kind in KINDS:
        rows = [
            f"| `{n}` | {_summary(c, modules[c.__module__] > 1)} | {_keys(c.Config)} |"
            for n, c in found[kind].items()
        ]
        parts.append(
            f"#### {kind.capitalize()}s\n\n| type | what | keys |\n|---|---|---|\n"
            + "\n".join(rows)
        )
    return "\n\n".join(parts) + "\n"
