"""Quix Streams: StreamingDataFrame apply/filter -> to_topic (W1) or LocalFileSink parquet (W2).

W3: the input topic's timestamp_extractor takes event time from the record's ts (the value
deserializer is quix's "json", which is orjson), apply -> {country, age}, group_by("country")
(quix windows are per message key, and the input has none; with a 1-partition input quix's
group_by re-keys in place, with more partitions it would go through a repartition__ topic),
tumbling_window(60 s, grace 0).agg(count=Count(), avg_age=Mean("age"))
.final(closing_strategy="partition") -> to_topic. "partition" closes a window when the
partition's event time passes its end; the default "key" would close a country's window only
when that same country sends a later record, so closed minutes could stay unemitted at the
end of the input. "partition" costs about twice the CPU (each expiry scans the partition's
window keys); BENCH_QUIX_CLOSING=key measures the default anyway (on this input every country
has a record in the last minute, so it happens to verify). Quix never flushes open windows:
the last, partial minute is not emitted. The run stops (app.stop) when the N-th input record
has been processed: the last window the input closes is emitted while processing that record
at the latest (no repartition topic in between, see above).
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import version

import orjson
from quixstreams import Application

from bench.common import (
    CONSUMER_CONFIG,
    PRODUCER_CONFIG,
    W3_WINDOW_S,
    Meter,
    age_of,
    make_transform,
    ts_seconds,
    worker_args,
)

CLOSING = os.environ.get("BENCH_QUIX_CLOSING", "partition")
"""W3's closing strategy; BENCH_QUIX_CLOSING=key measures quix's default (see the docstring)."""


def windowed(app: Application, a) -> None:
    """W3: per country, count and mean age in 1-minute tumbling event-time windows."""
    from datetime import timedelta

    from quixstreams.dataframe.windows.aggregations import Count, Mean

    def event_time(value, headers, timestamp, timestamp_type) -> int:
        return ts_seconds(value["ts"]) * 1000

    inp = app.topic(a.input, value_deserializer="json", timestamp_extractor=event_time)
    out = app.topic(a.output, value_serializer="json")
    sdf = app.dataframe(inp)
    sdf = sdf.apply(
        lambda r: {"country": r["location"]["country"], "age": age_of(r["dob"]["date"])}
    )
    sdf = sdf.group_by("country")
    sdf = (
        sdf.tumbling_window(timedelta(seconds=W3_WINDOW_S), grace_ms=0)
        .agg(count=Count(), avg_age=Mean("age"))
        .final(closing_strategy=CLOSING)
    )
    sdf = sdf.apply(
        lambda w, key, timestamp, headers: {
            "window_start": w["start"] // 1000,
            "country": key,
            "count": w["count"],
            "avg_age": w["avg_age"],
        },
        metadata=True,
    )
    sdf.to_topic(out)


def main() -> None:
    a = worker_args()
    meter = Meter(a.records)
    app: Application

    def processed(topic: str, partition: int, offset: int) -> None:
        meter.seen()
        if meter.done_reading:
            app.stop()

    consumer = {
        k: v
        for k, v in CONSUMER_CONFIG.items()
        if k not in ("auto.offset.reset", "enable.auto.commit")
    }
    app = Application(
        broker_address=a.brokers,
        consumer_group=a.group,
        auto_offset_reset="earliest",
        producer_extra_config=dict(PRODUCER_CONFIG),
        consumer_extra_config=consumer,
        on_message_processed=processed,
        use_changelog_topics=False,
        loglevel=logging.WARNING,
        state_dir=f"{a.workdir}/state",
    )
    if a.workload == "W3":
        windowed(app, a)
        app.run()
        closing = "" if CLOSING == "partition" else f" (closing_strategy {CLOSING})"
        meter.report(a.stats, version=f"quixstreams {version('quixstreams')}{closing}")
        return
    # bytes in, orjson parse in the step, like the other workers (W3 uses quix's "json" deserializer)
    inp = app.topic(a.input, value_deserializer="bytes")
    transform = make_transform()
    sdf = app.dataframe(inp)
    sdf = sdf.apply(lambda v: transform(orjson.loads(v))).filter(lambda v: v is not None)
    if a.workload == "W1":
        out = app.topic(a.output, value_serializer="bytes")
        sdf = sdf.apply(orjson.dumps)
        sdf.to_topic(out)
    else:
        from quixstreams.sinks.community.file.local import LocalFileSink

        sdf.sink(LocalFileSink(directory=a.output, format="parquet"))
    app.run()
    meter.report(a.stats, version=f"quixstreams {version('quixstreams')}")


if __name__ == "__main__":
    main()
