"""What every route of one API app shares: the pipeline, its engine pool and limits, the
request statistics and a lazily opened producer for ingest."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from tidelake.broker import Broker, Producer, connect
from tidelake.config import Pipeline
from tidelake.serve import prometheus
from tidelake.serve.engine import EnginePool, Limits


@dataclass
class ApiState:
    pipeline: Pipeline
    pool: EnginePool
    limits: Limits
    max_body: int
    stats: prometheus.RequestStats
    _broker: Broker | None = None
    _producer: Producer | None = None
    _produce_lock: threading.Lock = field(default_factory=threading.Lock)

    def produce(self, topic: str, values: list[bytes]) -> None:
        with self._produce_lock:
            if self._producer is None:
                self._broker = connect(self.pipeline.url(self.pipeline.broker))
                self._producer = self._broker.producer()
            self._producer.produce(topic, values)
            self._producer.flush()

    def close(self) -> None:
        self.pool.close()
        if self._producer is not None:
            self._producer.close()
        if self._broker is not None:
            self._broker.close()
