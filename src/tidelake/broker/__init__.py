"""The log: one contract (base.py), an embedded backend and Kafka."""

from __future__ import annotations

import threading

from tidelake import extras
from tidelake.broker.base import Broker, Consumer, MessageBatch, Producer, TopicPartition
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


class Writer:
    """Appends records to topics of the log at ``url``, connecting on the first write; safe
    to share between threads. Each ``write`` returns once its records are flushed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._broker: Broker | None = None
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    def write(self, topic: str, values: list[bytes]) -> None:
        with self._lock:
            if self._producer is None:
                self._broker = connect(self.url)
                self._producer = self._broker.producer()
            self._producer.produce(topic, values)
            self._producer.flush()

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close()
            if self._broker is not None:
                self._broker.close()
            self._broker = self._producer = None


__all__ = [
    "Broker",
    "Consumer",
    "MessageBatch",
    "Producer",
    "TopicPartition",
    "Writer",
    "connect",
]
