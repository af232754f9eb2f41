"""The log: one contract (base.py), an embedded backend and Kafka."""

from __future__ import annotations

from tidelake import extras
from tidelake.broker.base import Broker, Consumer, MessageBatch, Producer, TopicPartition
from tidelake.broker.writer import Writer
from tidelake.errors import ConfigError


def connect(url: str) -> Broker:
    """Open the log named by ``url``: ``embedded[:///path]`` or ``kafka://host:port[,host:port]``."""
    if url == "embedded" or url.startswith("embedded:"):
        from tidelake.broker.embedded import EmbeddedBroker

        path = url.partition(":")[2].removeprefix("//") or ".tidelake/log.db"
        return EmbeddedBroker(path)
    if url.startswith("kafka://"):
        kafka = extras.load("tidelake.broker.kafka", "a kafka:// broker")
        broker: Broker = kafka.KafkaBroker(url)
        return broker
    raise ConfigError(
        f"broker url {url!r} is not supported (use 'embedded', 'embedded:///path/log.db' "
        "or 'kafka://host:port')"
    )


__all__ = [
    "Broker",
    "Consumer",
    "MessageBatch",
    "Producer",
    "TopicPartition",
    "Writer",
    "connect",
]
