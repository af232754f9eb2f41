"""Pathway: kafka.read(json, static) -> native expressions + UDFs for HMAC -> kafka.write / deltalake.

Pathway's static mode reads the topic up to its end and then stops, so pw.run() returns.
The measured window starts just before pw.run() (pathway gives no per-record hook that
does not change the plan), so it includes its engine start and Kafka connect: a few
hundred ms, small next to a 1M-record run.

W3: kafka.read (ts, dob, country) -> age as in W1 and ts parsed to a datetime ->
windowby(time, pw.temporal.tumbling(1 minute, origin 2024-01-01T00:00), instance=country,
behavior=exactly_once_behavior()) -> reduce(count, avg) -> kafka.write (json). The
exactly-once behavior (shift 0 = zero lateness) emits each window once, when event time
passes its end, instead of an update stream of every intermediate aggregate; at the end of
the static input pathway also emits the windows still open (the verifier drops the last,
partial minute). pathway's json output carries its "time" and "diff" columns.
"""

from __future__ import annotations

from importlib.metadata import version

import pathway as pw

from bench.common import (
    CONSUMER_CONFIG,
    PRODUCER_CONFIG,
    REF_DATE,
    W3_ORIGIN,
    W3_WINDOW_S,
    Hasher,
    Meter,
    worker_args,
)


class In(pw.Schema):
    uid: str  # 'id' is reserved in pathway (the row key): the verifier accepts uid for id
    first: str
    last: str
    email: str
    phone: str
    dob: str
    country: str


class W3In(pw.Schema):
    ts: str
    dob: str
    country: str


def windowed(a, settings: dict) -> pw.Table:
    """W3: per country, count and mean age in 1-minute tumbling event-time windows."""
    import datetime

    t = pw.io.kafka.read(
        settings,
        a.input,
        schema=W3In,
        format="json",
        mode="static",
        json_field_paths={"dob": "/dob/date", "country": "/location/country"},
    )
    t = t.select(country=pw.this.country, age=age_expr(), time=pw.this.ts.dt.strptime(TS_FORMAT))
    origin = datetime.datetime.fromisoformat(W3_ORIGIN.removesuffix("Z"))  # naive, as the times
    return t.windowby(
        pw.this.time,
        window=pw.temporal.tumbling(
            duration=datetime.timedelta(seconds=W3_WINDOW_S), origin=origin
        ),
        instance=pw.this.country,
        behavior=pw.temporal.exactly_once_behavior(),
    ).reduce(
        window_start=pw.cast(int, pw.this._pw_window_start.dt.timestamp(unit="s")),
        country=pw.this._pw_instance,
        count=pw.reducers.count(),
        avg_age=pw.reducers.avg(pw.this.age),
    )


TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def age_expr():
    """age_of(dob) as native pathway expressions (whole years as of REF_DATE)."""
    ry, rm, rd = REF_DATE
    dob = pw.this.dob
    md = dob.str.slice(5, 7).str.parse_int() * 100 + dob.str.slice(8, 10).str.parse_int()
    return ry - dob.str.slice(0, 4).str.parse_int() - pw.if_else(md > rm * 100 + rd, 1, 0)


def main() -> None:
    a = worker_args()
    hasher = Hasher()

    @pw.udf(deterministic=True)
    def hmac_hex(v: str) -> str:
        return hasher(v)

    @pw.udf(deterministic=True)
    def domain(email: str) -> str:
        return email.split("@", 1)[1]

    settings = {
        "bootstrap.servers": a.brokers,
        "group.id": a.group,
        **{k: str(v) for k, v in CONSUMER_CONFIG.items() if k not in ("enable.auto.commit",)},
    }
    if a.workload == "W3":
        pw.io.kafka.write(
            windowed(a, settings),
            {"bootstrap.servers": a.brokers, **{k: str(v) for k, v in PRODUCER_CONFIG.items()}},
            topic_name=a.output,
            format="json",
        )
        meter = Meter(a.records)
        meter.seen(a.records)
        pw.run(monitoring_level=pw.MonitoringLevel.NONE)
        meter.report(a.stats, version=f"pathway {version('pathway')}")
        return
    t = pw.io.kafka.read(
        settings,
        a.input,
        schema=In,
        format="json",
        mode="static",
        json_field_paths={
            "uid": "/id",
            "first": "/name/first",
            "last": "/name/last",
            "dob": "/dob/date",
            "country": "/location/country",
        },
    )
    t = t.select(
        uid=pw.this.uid,
        full_name=pw.this.last + " " + pw.this.first,
        email=pw.this.email,
        phone=pw.this.phone,
        country=pw.this.country,
        age=age_expr(),
    ).filter(pw.this.age > 13)
    t = t.select(
        uid=pw.this.uid,
        full_name=pw.this.full_name,
        email_domain=domain(pw.this.email),
        email_hmac=hmac_hex(pw.this.email),
        phone_hmac=hmac_hex(pw.this.phone),
        age=pw.this.age,
        country=pw.this.country,
    )
    if a.workload == "W1":
        pw.io.kafka.write(
            t,
            {"bootstrap.servers": a.brokers, **{k: str(v) for k, v in PRODUCER_CONFIG.items()}},
            topic_name=a.output,
            format="json",
        )
    else:
        # pw.io.deltalake.write needs a Pathway license key (free, but an online sign-up we
        # cannot do here); the closest free Parquet path is a subscribe callback + pyarrow
        import os

        import pyarrow as pa
        import pyarrow.parquet as pq

        os.makedirs(a.output, exist_ok=True)
        rows: list[dict] = []
        part = [0]

        def flush() -> None:
            if rows:
                pq.write_table(pa.Table.from_pylist(rows), f"{a.output}/part-{part[0]:05d}.parquet")
                rows.clear()
                part[0] += 1

        def on_change(key, row, time, is_addition) -> None:
            if is_addition:
                row["id"] = row.pop("uid")
                rows.append(row)
                if len(rows) >= 100_000:
                    flush()

        pw.io.subscribe(t, on_change=on_change, on_end=flush)
    meter = Meter(a.records)
    meter.seen(a.records)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    meter.report(a.stats, version=f"pathway {version('pathway')}")


if __name__ == "__main__":
    main()
