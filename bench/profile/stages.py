"""Time each stage of tidelake's W1 hot path on in-memory batches (no Kafka).

    .venv/bin/python -m bench.profile.stages [--records 200000] [--batch 10000]

Builds the transforms from bench/pipelines/users_w1.yaml and times: JSON decode
(tidelake.formats.decode_json, projected to what the sql transform reads, as the topic
source does), each transform, JSON encode (encode_json), and the
per-record produce loop's cost stand-in (a Python loop over the encoded values).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench.common import DEFAULT_KEY, KEY_ENV


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=10_000)
    a = p.parse_args()
    os.environ.setdefault(KEY_ENV, DEFAULT_KEY)
    os.environ.update(BENCH_INPUT="x", BENCH_OUTPUT="x")
    import duckdb

    from bench.harness import ENCODE_SQL
    from bench.workers.tidelake import load_flow
    from tidelake.formats.json import decode_json, encode_json, project_schema
    from tidelake.runtime.runner import build
    from tidelake.sources.generator import generate

    pipeline = load_flow(
        (Path(__file__).parent.parent / "pipelines/users_w1.yaml").read_text(),
        "w1",
        Path("<pipeline>"),
    )
    flow = pipeline.flows["w1"]
    transforms = [build("transform", t) for t in flow.transforms]

    class Ctx:
        flow = "w1"

    for t in transforms:
        t.open(Ctx())  # type: ignore[arg-type]
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    values: list[bytes] = []
    for start in range(0, a.records, 100_000):
        g = generate("user_profiles", start, min(100_000, a.records - start), 42)  # noqa: F841
        values += con.sql(ENCODE_SQL).to_arrow_table().column(0).to_pylist()
    times: dict[str, float] = {}

    def tick(name: str, t0: float) -> float:
        t1 = time.process_time()
        times[name] = times.get(name, 0.0) + t1 - t0
        return t1

    schema = None  # as the topic source does: the first batch whole, then what sql reads
    for s in range(0, len(values), a.batch):
        chunk = values[s : s + a.batch]
        t0 = time.process_time()
        table, bad = decode_json(chunk, schema)
        if schema is None and (paths := transforms[0].reads(table.schema)):
            schema = project_schema(table.schema, paths)
        t0 = tick("decode_json (pyarrow, the columns sql reads)", t0)
        for tr in transforms:
            table = tr(table)
            t0 = tick(f"transform {tr.config.type}", t0)
        out = encode_json(table)
        t0 = tick("encode_json (duckdb to_json + to_pylist)", t0)
        n = 0
        for v in out:  # what KafkaProducer.produce does per record, minus librdkafka
            n += len(v)
        tick("python loop over output values", t0)
    total = sum(times.values())
    print(
        f"{a.records} records, batch {a.batch}: {a.records / total:,.0f} rec/s (CPU time) on the "
        "transform path alone (no Kafka)"
    )
    for k, v in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"  {k:45s} {v:7.2f}s  {v / total:5.1%}  {v / a.records * 1e6:6.2f} s/M")


if __name__ == "__main__":
    main()
