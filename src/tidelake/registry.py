"""Connector names used in pipeline files -> the class implementing them.

Entries are import paths, so a pipeline only imports the connectors it uses
(and their optional dependencies). ``module:Class [extra]`` names the ``tidelake[extra]``
a connector needs: without it, lookup fails with the pip command that installs it.
A new connector is one file plus one line here.
"""

from __future__ import annotations

import importlib
from typing import Literal

from tidelake import pyarrow_pandas
from tidelake.errors import ConfigError
from tidelake.extras import missing_extra

Kind = Literal["source", "transform", "sink"]

SOURCES = {
    "file": "tidelake.sources.file:FileSource",
    "http": "tidelake.sources.http:HttpSource",
    "generator": "tidelake.sources.generator:GeneratorSource",
    "topic": "tidelake.sources.topic:TopicSource",
    "dead_letters": "tidelake.sources.dead_letters:DeadLetterSource",
    "cdc": "tidelake.sources.cdc:CdcSource",
    "query": "tidelake.sources.query:QuerySource [lake]",
    "crawl": "tidelake.sources.crawl:CrawlSource [crawl]",
}
TRANSFORMS = {
    "sql": "tidelake.transforms.sql:SqlTransform",
    "rename": "tidelake.transforms.fields:Rename",
    "derive": "tidelake.transforms.fields:Derive",
    "filter": "tidelake.transforms.fields:Filter",
    "drop": "tidelake.transforms.fields:Drop",
    "flatten": "tidelake.transforms.fields:Flatten",
    "pseudonymize": "tidelake.transforms.pseudonymize:Pseudonymize",
    "redact": "tidelake.transforms.redact:Redact",
    "validate": "tidelake.transforms.validate:Validate",
    "python": "tidelake.transforms.python:PythonTransform",
    "unwrap": "tidelake.transforms.unwrap:Unwrap",
    "window": "tidelake.transforms.window:Window",
}
SINKS = {
    "table": "tidelake.sinks.table:TableSink",
    "topic": "tidelake.sinks.topic:TopicSink",
    "console": "tidelake.sinks.console:ConsoleSink",
    "lake": "tidelake.sinks.lake:LakeSink [lake]",
    "s3": "tidelake.sinks.s3:S3Sink",
    "cassandra": "tidelake.sinks.cassandra:CassandraSink",
    "mongodb": "tidelake.sinks.mongodb:MongoSink",
    "webhook": "tidelake.sinks.webhook:WebhookSink",
}
_TABLES: dict[str, dict[str, str]] = {"source": SOURCES, "transform": TRANSFORMS, "sink": SINKS}


def names(kind: Kind) -> list[str]:
    return sorted(_TABLES[kind])


def lookup(kind: Kind, name: str) -> type:
    """The connector class for ``name``; a ConfigError listing the valid names otherwise."""
    table = _TABLES[kind]
    if name not in table:
        raise ConfigError(
            f"unknown {kind} type {name!r} (choose one of: {', '.join(sorted(table))})"
        )
    target, _, extra = table[name].partition(" [")
    module, _, attr = target.partition(":")
    pyarrow_pandas.skip_probe()  # before a connector's imports (pyarrow.dataset) probe
    try:
        cls: type = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        problem = missing_extra(e, f"the {name!r} {kind}", extra.rstrip("]") or None)
        if problem is None:
            raise
        raise problem from e
    return cls
