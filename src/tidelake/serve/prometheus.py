"""``/metrics`` through ``prometheus_client``: flow counters and API request metrics.

Flow counters come from the files the runners publish (``runtime.metrics``), read at
scrape time by a collector; API counters are kept per request. Every label is
bounded: methods outside the HTTP set fold into ``other``, paths that match no
route into ``<unmatched>`` (routes are templates such as ``/api/tables/{name}``,
never raw paths), and statuses outside 100-599 into ``other``, so an
unauthenticated client cannot grow the exposition.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily as _Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"

_FLOW_COUNTERS = (
    ("records_in", "records read by the flow's source"),
    ("records_out", "records written by the flow's sink"),
    ("bytes_in", "bytes read by the flow's source"),
    ("batches", "micro-batches written"),
    ("errors", "errors raised while running the flow"),
    ("dead_letters", "records sent to the dead-letter topic"),
)
_FLOW_GAUGES = (
    ("lag", "records in the log not yet read by the flow"),
    ("last_batch_seconds", "duration of the last batch"),
)


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


class _Flows:
    """A collector over the flows' published counters, read on every scrape."""

    def __init__(self, read: Callable[[], list[dict[str, object]]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        flows = self.read()
        now = time.time()
        for key, help_text in _FLOW_COUNTERS:
            counter = _Counter(f"tidelake_flow_{key}", help_text, labels=["flow"])
            for f in flows:
                counter.add_metric([str(f.get("flow", ""))], _number(f.get(key)))
            yield counter
        counts = _Counter(
            "tidelake_flow_count",
            "counts transforms and sinks report (redact, lake commit retries)",
            labels=["flow", "name"],
        )
        for f in flows:
            named = f.get("counts")
            for name, n in named.items() if isinstance(named, dict) else ():
                counts.add_metric([str(f.get("flow", "")), str(name)], _number(n))
        yield counts
        for key, help_text in _FLOW_GAUGES:
            gauge = GaugeMetricFamily(f"tidelake_flow_{key}", help_text, labels=["flow"])
            for f in flows:
                gauge.add_metric([str(f.get("flow", ""))], _number(f.get(key)))
            yield gauge
        age = GaugeMetricFamily(
            "tidelake_flow_last_checkpoint_age_seconds",
            "seconds since the last checkpoint",
            labels=["flow"],
        )
        for f in flows:
            last = _number(f.get("last_checkpoint"))
            if last > 0:
                age.add_metric([str(f.get("flow", ""))], round(max(now - last, 0.0), 3))
        yield age
        state = GaugeMetricFamily(
            "tidelake_flow_state", "1 for the flow's current state", labels=["flow", "state"]
        )
        for f in flows:
            state.add_metric([str(f.get("flow", "")), str(f.get("state", ""))], 1)
        yield state


class RequestStats:
    """API request counts and latency histograms, per method, route template and status."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "tidelake_api_requests",
            "API requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "tidelake_api_request_duration_seconds",
            "API request latency",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self._flows: _Flows | None = None

    def observe(self, method: str, route: str | None, status: int, seconds: float) -> None:
        """Count one request; unknown methods, unmatched paths and odd statuses fold."""
        method = method if method in METHODS else "other"
        route = route or UNMATCHED
        code = str(status) if 100 <= status <= 599 else "other"
        self._requests.labels(method, route, code).inc()
        self._latency.labels(method, route).observe(seconds)

    def with_flows(self, read: Callable[[], list[dict[str, object]]]) -> None:
        """Read flow counters with ``read`` on every scrape (once per app)."""
        if self._flows is None:
            self._flows = _Flows(read)
            self.registry.register(self._flows)  # type: ignore[arg-type]

    def render(self) -> bytes:
        """The whole exposition in the Prometheus text format."""
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "METHODS", "UNMATCHED", "RequestStats"]
