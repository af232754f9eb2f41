"""Redrive: put a flow's dead letters back into its input topic, exactly once.

A redrive is an ordinary flow, ``<flow>.redrive``, built on the spot: a ``dead_letters``
source (the dead-letter topic in its own consumer group ``<pipeline>.<flow>.redrive``, up to
the end it had when the redrive started) -> the optional fixing SQL -> an exactly-once
``topic`` sink into the flow's input topic. The sink commits the records and the positions
in the dead-letter topic in one log transaction, so a second redrive finds nothing left,
and a redrive killed midway resumes after the last committed batch when run again. Rows the
SQL leaves out count as handled: later redrives do not offer them again. Letters repeated
by a crash of the flow that wrote them (same origin and payload) are redriven once per run.
"""

from __future__ import annotations

import threading

from tidelake.config import BatchSettings, Flow, Pipeline
from tidelake.errors import ConfigError
from tidelake.runtime.dead_letters import dead_letter_topic
from tidelake.runtime.metrics import FlowMetrics
from tidelake.runtime.runner import FlowRunner
from tidelake.sinks.topic import TopicSinkConfig
from tidelake.sources.dead_letters import DeadLetterSourceConfig
from tidelake.sources.topic import TopicSourceConfig
from tidelake.transforms.sql import SqlTransform


def input_topic(pipeline: Pipeline, flow: str) -> str:
    """The one topic ``flow`` reads (where its redriven dead letters go)."""
    dead_letter_topic(pipeline, flow)  # the flow exists
    source = pipeline.flows[flow].source
    if isinstance(source, TopicSourceConfig) and isinstance(source.topic, str):
        return source.topic
    what = "several topics" if isinstance(source, TopicSourceConfig) else f"a {source.type} source"
    raise ConfigError(
        f"flow {flow!r} reads {what}, not one topic: name the topic its dead letters "
        "should go to with --to TOPIC"
    )


def redrive(
    pipeline: Pipeline,
    flow: str,
    sql: str | None = None,
    to: str | None = None,
    batch_size: int = 10_000,
    stop: threading.Event | None = None,
) -> FlowMetrics:
    """Re-inject ``flow``'s dead letters into ``to`` (default: its input topic), through
    ``sql`` (over ``batch``, the letters' payloads) when given; returns the run's metrics
    (``records_in`` letters read, ``records_out`` records written)."""
    target = to or input_topic(pipeline, flow)
    name = f"{flow}.redrive"
    spec = Flow(
        source=DeadLetterSourceConfig(type="dead_letters", flow=flow, until_end=True),
        transforms=[SqlTransform.Config(type="sql", query=sql)] if sql else [],
        sink=TopicSinkConfig(type="topic", topic=target),
        batch=BatchSettings(size=batch_size, max_latency=0.5),
    )
    with_redrive = pipeline.model_copy(update={"flows": {**pipeline.flows, name: spec}})
    return FlowRunner(with_redrive, name, stop).run()
