"""Quix Streams: StreamingDataFrame apply/filter -> to_topic (W1) or LocalFileSink parquet (W2)."""

from __future__ import annotations

import logging
from importlib.metadata import version

import orjson
from quixstreams import Application

from bench.common import CONSUMER_CONFIG, PRODUCER_CONFIG, Meter, make_transform, worker_args


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
    # bytes in, orjson parse in the step (quix's "json" deserializer uses stdlib-speed json)
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
