"""``/metrics`` in the Prometheus text exposition format (version 0.0.4).

Flow counters come from the files the runners publish (``runtime.metrics``);
API counters are kept here, per route template (never per raw path, so label
cardinality stays bounded).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_FLOW_COUNTERS = (
    ("records_in", "records read by the flow's source"),
    ("records_out", "records written by the flow's sink"),
    ("bytes_in", "bytes read by the flow's source"),
    ("batches", "micro-batches written"),
    ("errors", "errors raised while running the flow"),
    ("dead_letters", "records sent to the dead-letter topic"),
)
_FLOW_GAUGES = (
    ("lag", "lag", "records in the log not yet read by the flow"),
    ("last_batch_seconds", "last_batch_seconds", "duration of the last batch"),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


class RequestStats:
    """API request counts and latency histograms, per method, route and status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._hist: dict[tuple[str, str], list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, str(status))
            self._counts[key] = self._counts.get(key, 0) + 1
            h = self._hist.setdefault((method, route), [0.0] * (len(BUCKETS) + 2))
            h[bisect.bisect_left(BUCKETS, seconds)] += 1
            h[-1] += seconds

    def lines(self) -> Iterable[str]:
        with self._lock:
            counts = dict(self._counts)
            hist = {k: list(v) for k, v in self._hist.items()}
        yield "# HELP tidelake_api_requests_total API requests served."
        yield "# TYPE tidelake_api_requests_total counter"
        for (method, route, status), n in sorted(counts.items()):
            labels = _labels({"method": method, "route": route, "status": status})
            yield f"tidelake_api_requests_total{labels} {n}"
        yield "# HELP tidelake_api_request_duration_seconds API request latency."
        yield "# TYPE tidelake_api_request_duration_seconds histogram"
        for (method, route), h in sorted(hist.items()):
            base = {"method": method, "route": route}
            cumulative = 0.0
            for bound, hits in zip((*BUCKETS, float("inf")), h[:-1], strict=True):
                cumulative += hits
                le = "+Inf" if bound == float("inf") else repr(bound)
                name = "tidelake_api_request_duration_seconds_bucket"
                yield f"{name}{_labels(base | {'le': le})} {cumulative:g}"
            yield f"tidelake_api_request_duration_seconds_sum{_labels(base)} {h[-1]:.6f}"
            yield f"tidelake_api_request_duration_seconds_count{_labels(base)} {cumulative:g}"


def render(flows: list[dict[str, object]], stats: RequestStats, now: float | None = None) -> str:
    """The whole exposition: per-flow counters and gauges, then API request metrics."""
    now = time.time() if now is None else now
    out: list[str] = []
    names = [str(f.get("flow", "")) for f in flows]
    for key, help_text in _FLOW_COUNTERS:
        out += [
            f"# HELP tidelake_flow_{key}_total {help_text}.",
            f"# TYPE tidelake_flow_{key}_total counter",
        ]
        out += [
            f"tidelake_flow_{key}_total{_labels({'flow': n})} {_number(f.get(key)):g}"
            for n, f in zip(names, flows, strict=True)
        ]
    for key, metric, help_text in _FLOW_GAUGES:
        out += [
            f"# HELP tidelake_flow_{metric} {help_text}.",
            f"# TYPE tidelake_flow_{metric} gauge",
        ]
        out += [
            f"tidelake_flow_{metric}{_labels({'flow': n})} {_number(f.get(key)):g}"
            for n, f in zip(names, flows, strict=True)
        ]
    out += [
        "# HELP tidelake_flow_last_checkpoint_age_seconds seconds since the last checkpoint.",
        "# TYPE tidelake_flow_last_checkpoint_age_seconds gauge",
    ]
    for n, f in zip(names, flows, strict=True):
        last = _number(f.get("last_checkpoint"))
        if last > 0:
            age = max(now - last, 0.0)
            out.append(f"tidelake_flow_last_checkpoint_age_seconds{_labels({'flow': n})} {age:.3f}")
    out += [
        "# HELP tidelake_flow_state 1 for the flow's current state.",
        "# TYPE tidelake_flow_state gauge",
    ]
    out += [
        f"tidelake_flow_state{_labels({'flow': n, 'state': str(f.get('state', ''))})} 1"
        for n, f in zip(names, flows, strict=True)
    ]
    out += list(stats.lines())
    return "\n".join(out) + "\n"


__all__ = ["CONTENT_TYPE", "RequestStats", "render"]
