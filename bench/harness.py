"""Prepare the input topic once, run each system's worker in its own venv, verify, measure."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    DEFAULT_KEY,
    FIELDS,
    KEY_ENV,
    Checksum,
    WindowAggregate,
    WindowChecksum,
    make_transform,
)

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "tidelake" / "bench"))
VENVS = Path(os.environ.get("BENCH_VENVS", Path.home() / ".cache" / "tidelake" / "bench-venvs"))
RUNS = CACHE / "runs"
RESULTS = CACHE / "results.jsonl"

SYSTEMS = [
    "tidelake",
    "tidelake_spark",
    "ceiling",
    "quixstreams",
    "bytewax",
    "pathway",
    "faust",
    "tidelake_patched",
]
DEFAULT_SYSTEMS = SYSTEMS[:-1]
"""tidelake_patched: an experiment (the profile's fixes applied by monkeypatching), not a peer.
tidelake_spark: the same pipeline file with ``engine: spark`` (W2 only)."""
WORKLOADS = ["W1", "W2", "W3"]
TOPIC_OUTPUT = ("W1", "W3")
"""Workloads whose output is a Kafka topic (W2 writes files or a lake table)."""
PENDING = {
    ("faust", "W3"): "faust's windowed tables close windows in a periodic cleanup task that "
    "compares window ends with the wall clock (window.stale(end, time.time())), not with "
    "event time, and emit only through on_window_close: replayed 2024 event times would all "
    "be stale at the next tick, so there is no like-for-like event-time window "
    "(and faust is ~20x slower than the others)",
    ("tidelake_patched", "W3"): "the patched experiment covers W1/W2 only",
    ("tidelake_spark", "W1"): "the Spark engine is benchmarked on W2 (topic -> lake), as #15 asks",
    ("tidelake_spark", "W3"): "the Spark engine is benchmarked on W2 (topic -> lake), as #15 asks",
}
if not (REPO / "src" / "tidelake" / "transforms" / "window.py").exists():
    # switches on by itself once the window transform lands
    PENDING[("tidelake", "W3")] = "tidelake has no window transform yet"


def python_of(system: str) -> str:
    if system.startswith("tidelake"):
        return str(REPO / ".venv" / "bin" / "python")
    return str(VENVS / system / "bin" / "python")


def say(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


# -- Kafka ----------------------------------------------------------------------------------------


def kafka_up() -> str:
    from tidelake import infra

    url = infra.up(["kafka"])["kafka"]
    return url.removeprefix("kafka://")


_ADMINS: dict = {}


def admin(brokers: str):
    from confluent_kafka.admin import AdminClient

    if brokers not in _ADMINS:  # keep it alive: futures fail when their client is destroyed
        # a metadata request for one topic must not re-create a deleted output topic
        _ADMINS[brokers] = AdminClient(
            {"bootstrap.servers": brokers, "allow.auto.create.topics": False}
        )
    return _ADMINS[brokers]


def high_watermark(brokers: str, topic: str, low: bool = False) -> int | None:
    """Sum over partitions of the end offsets (``low``: of the first offsets still kept)."""
    from confluent_kafka import Consumer, TopicPartition

    md = admin(brokers).list_topics(topic=topic, timeout=10).topics.get(topic)
    if md is None or md.error is not None:
        return None
    c = Consumer({"bootstrap.servers": brokers, "group.id": "bench-probe"})
    try:
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0 if low else 1]
            for p in md.partitions
        )
    finally:
        c.close()


def create_topic(
    brokers: str, topic: str, partitions: int = 1, config: dict[str, str] | None = None
) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    new = NewTopic(topic, num_partitions=partitions, config=config or {})
    fut = admin(brokers).create_topics([new])[topic]
    try:
        fut.result(timeout=30)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    deadline = time.time() + 30
    while high_watermark(brokers, topic) is None and time.time() < deadline:
        time.sleep(0.1)


def delete_topic(brokers: str, topic: str) -> None:
    try:
        admin(brokers).delete_topics([topic])[topic].result(timeout=30)
    except Exception as e:  # noqa: BLE001 - cleanup only
        say(f"  (could not delete {topic}: {e})")


# -- input + reference ------------------------------------------------------------------------------

ENCODE_SQL = """
SELECT CAST(to_json(struct_pack(
    gender, name, location, email, login,
    dob := struct_pack(date := strftime(dob.date, '%Y-%m-%dT%H:%M:%S.%fZ'), age := dob.age),
    registered := struct_pack(date := strftime(registered.date, '%Y-%m-%dT%H:%M:%S.%fZ'),
                              age := registered.age),
    phone, cell, id, nat,
    ts := strftime(ts, '%Y-%m-%dT%H:%M:%SZ'))) AS BLOB) FROM g
"""


def input_topic(records: int, seed: int, partitions: int = 1) -> str:
    base = f"bench.users.{records}.s{seed}"
    return base if partitions == 1 else f"{base}.p{partitions}"


def prepare(brokers: str, records: int, seed: int, partitions: int = 1) -> tuple[str, dict]:
    """The input topic (produced once, then reused) and the reference result (cached).

    With several partitions, record i goes to partition i % partitions (even shares, each
    partition in generation order); the reference does not depend on the partition count."""
    import duckdb
    import orjson
    from confluent_kafka import Producer

    from tidelake.sources.generator import generate

    topic = input_topic(records, seed, partitions)
    ref_path = CACHE / f"{topic}.reference.json"
    have = high_watermark(brokers, topic)
    expired = have and high_watermark(brokers, topic, low=True)  # retention deleted the start
    if have == records and not expired and ref_path.exists():
        say(f"input: {topic} already holds {records} records (reused)")
        return topic, json.loads(ref_path.read_text())
    if have:
        say(f"input: {topic} is incomplete ({have} end offset, {expired} expired): re-producing")
        delete_topic(brokers, topic)
        while high_watermark(brokers, topic) is not None:
            time.sleep(0.5)
    (CACHE / f"{topic}.w3.reference.json").unlink(missing_ok=True)
    say(f"input: producing {records} user profiles (seed {seed}) to {topic} ...")
    create_topic(brokers, topic, partitions, {"retention.ms": "-1"})  # reused across days
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    p = Producer(
        {
            "bootstrap.servers": brokers,
            "linger.ms": 20,
            "compression.type": "lz4",
            "batch.size": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    transform = make_transform(os.environ.get(KEY_ENV, DEFAULT_KEY).encode())
    ref, raw = Checksum(), Checksum()
    size = 0
    t0 = time.time()
    chunk = 100_000
    for start in range(0, records, chunk):
        g = generate("user_profiles", start, min(chunk, records - start), seed)
        values = con.sql(ENCODE_SQL).to_arrow_table().column(0).to_pylist()
        for i, v in enumerate(values, start):
            size += len(v)
            raw.add_raw(v)
            rec = transform(orjson.loads(v))
            if rec is not None:
                ref.add(rec)
            while True:
                try:
                    p.produce(topic, v, partition=i % partitions)
                    break
                except BufferError:
                    p.poll(0.1)
        p.poll(0)
        say(f"  {start + len(values)} records, {time.time() - t0:.0f}s")
        del g
    p.flush()
    assert high_watermark(brokers, topic) == records
    reference = {
        **ref.result(),
        "records_in": records,
        "avg_value_bytes": round(size / records, 1),
        "seed": seed,
        "raw": raw.result(),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    ref_path.write_text(json.dumps(reference))
    say(f"input ready: {reference}")
    return topic, reference


def w3_reference(brokers: str, topic: str, records: int) -> dict:
    """W3's reference result, computed once by reading the input topic back (cached)."""
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    path = CACHE / f"{topic}.w3.reference.json"
    if path.exists():
        ref = json.loads(path.read_text())
        if ref.get("records_in") == records:
            return ref
    say(f"W3 reference: reading {topic} back ...")
    t0 = time.time()
    agg = WindowAggregate()
    c = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "bench-w3-reference",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    loads = orjson.loads
    while agg.records < records:
        msgs = c.consume(min(50_000, records - agg.records), 10.0)
        if not msgs:
            break
        for m in msgs:
            if not m.error():
                agg.add(loads(m.value()))
    c.close()
    if agg.records != records:
        raise RuntimeError(f"{topic}: read {agg.records} records, expected {records}")
    ref = agg.result()
    path.write_text(json.dumps(ref))
    say(f"W3 reference ({time.time() - t0:.0f}s): {ref}")
    return ref


# -- verification -------------------------------------------------------------------------------------


def verify_topic(
    brokers: str, topic: str, raw: bool = False, window_max_ts: int | None = None
) -> dict:
    """Count + checksum of an output topic: W1 records, raw bytes (the ceiling), or, given
    window_max_ts, W3 window rows (those of windows still open at that ts left out)."""
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    end = high_watermark(brokers, topic) or 0
    c = Consumer(
        {"bootstrap.servers": brokers, "group.id": "bench-verify", "enable.auto.commit": False}
    )
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    cs = Checksum() if window_max_ts is None else WindowChecksum(window_max_ts)
    seen = 0
    loads = orjson.loads
    while seen < end:
        msgs = c.consume(50_000, 5.0)
        if not msgs:
            break
        for m in msgs:
            if m.error():
                continue
            seen += 1
            if raw:
                cs.add_raw(m.value())
            else:
                cs.add(loads(m.value()))
    c.close()
    return cs.result()


def verify_parquet(system: str, out: str, pipeline_name: str = "bench_users") -> dict:
    """Count + checksum of W2's output (and its number of distinct ids: a duplicate row
    would not change the count of a run that also lost one)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    cs = Checksum()
    if system.startswith("tidelake"):
        from bench.workers.tidelake import load_flow
        from tidelake.lake.catalog import load_table

        os.environ.update(
            BENCH_INPUT="unused",
            BENCH_OUTPUT="unused",
            BENCH_LAKE=f"file://{out}",
            BENCH_PIPELINE=pipeline_name,
        )  # the worker's name: the lake namespace
        pipeline = load_flow(
            (REPO / "bench/pipelines/users_w1.yaml").read_text(),
            "w2",
            Path(out).parent / "pipeline.yaml",
        )
        table = load_table(pipeline, "users_w2")
        data = table.scan(selected_fields=FIELDS).to_arrow()
    else:
        files = [str(p) for p in Path(out).rglob("*.parquet")]
        if not files:
            return cs.result()
        cols = ["value"] if system == "ceiling" else list(FIELDS)
        data = ds.dataset(files, format="parquet").to_table(columns=cols)
    if system == "ceiling":
        for v in data.column("value").to_pylist():
            cs.add_raw(v)
        return cs.result()
    for batch in data.to_batches(100_000):
        cs.add_columns({f: batch.column(f).to_pylist() for f in FIELDS})
    return cs.result() | {"distinct_ids": pc.count_distinct(data.column("id")).as_py()}


# -- one run ------------------------------------------------------------------------------------------


def run_once(
    system: str,
    workload: str,
    brokers: str,
    topic: str,
    reference: dict,
    records: int,
    label: str,
    timeout: float,
) -> dict:
    # underscores only: quixstreams' file sink refuses '-' in its directory path
    run_id = f"{system}_{workload}_{time.strftime('%Y%m%d_%H%M%S')}_{label}"
    workdir = RUNS / run_id
    workdir.mkdir(parents=True, exist_ok=True)
    if workload in TOPIC_OUTPUT:
        output = f"bench.out.{run_id}"
        # no time-based retention: a system may stamp its output with event time (quixstreams
        # stamps each window result with its window start, in 2024), and the broker's
        # retention check (every 5 min) would delete those records mid-run
        create_topic(brokers, output, 1, {"retention.ms": "-1"})
    else:
        output = str(workdir / "out")
    stats = workdir / "stats.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        KEY_ENV: os.environ.get(KEY_ENV, DEFAULT_KEY),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        python_of(system),
        "-m",
        f"bench.workers.{system}",
        "--workload",
        workload,
        "--brokers",
        brokers,
        "--input",
        topic,
        "--output",
        output,
        "--records",
        str(records),
        "--group",
        f"bench.{run_id}",
        "--stats",
        str(stats),
        "--workdir",
        str(workdir),
    ]
    load0 = os.getloadavg()
    t0 = time.time()
    with open(workdir / "worker.log", "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=str(workdir),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        status, ru = None, None
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.time() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, ru = os.wait4(proc.pid, 0)
                status = -9
                break
            time.sleep(0.05)
        if status != -9:
            status = os.waitstatus_to_exitcode(status)
        proc.returncode = status
    wall = time.time() - t0
    load1 = os.getloadavg()
    result: dict = {
        "system": system,
        "workload": workload,
        "records": records,
        "run_id": run_id,
        "command": " ".join(cmd),
        "exit": status,
        "process_wall_s": round(wall, 2),
        "process_cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
        "loadavg_before": load0[0],
        "loadavg_after": load1[0],
    }
    if status != 0 or not stats.exists():
        tail = (workdir / "worker.log").read_text(errors="replace")[-3000:]
        result.update(ok=False, error=f"exit {status}: {tail}")
        say(f"  FAILED ({status}); log: {workdir / 'worker.log'}\n{tail[-1500:]}")
        if workload in TOPIC_OUTPUT:
            delete_topic(brokers, output)
        return result
    s = json.loads(stats.read_text())
    window = s["t_end"] - s["t_first"]
    raw = system == "ceiling"
    if workload == "W3" and raw:
        # the ceiling only consumes (see bench/workers/ceiling.py): all input seen, no output
        produced = high_watermark(brokers, output) or 0
        got = {"count": s["records_in"], "checksum": f"produced {produced}"}
        expect = {"count": reference["records_in"], "checksum": "produced 0"}
    elif workload == "W3":
        got = verify_topic(brokers, output, window_max_ts=reference["max_ts"])
        expect = reference
    elif workload == "W1":
        got = verify_topic(brokers, output, raw)
        expect = reference["raw"] if raw else reference
    else:
        got = verify_parquet(system, output, f"bench.{run_id}")
        expect = reference["raw"] if raw else reference
    ok = got["count"] == expect["count"] and got["checksum"] == expect["checksum"]
    if "open_rows" in got:
        result["open_window_rows_dropped"] = got["open_rows"]
    result.update(
        ok=ok,
        version=s.get("version"),
        records_in=s["records_in"],
        output_count=got["count"],
        output_checksum=got["checksum"],
        window_s=round(window, 3),
        # the worker's own VmHWM; wait4's ru_maxrss includes the harness's RSS at fork time
        peak_rss_mb=s.get("vm_hwm_mb") or result["peak_rss_mb"],
        maxrss_wait4_mb=result["peak_rss_mb"],
        records_per_s=round(s["records_in"] / window),
        cpu_s_per_m=round((s["cpu_end"] - s["cpu_first"]) / s["records_in"] * 1e6, 2),
        process_cpu_s_per_m=round(result["process_cpu_s"] / s["records_in"] * 1e6, 2),
        extra={
            k: v
            for k, v in s.items()
            if k
            not in (
                "t_first",
                "t_end",
                "cpu_first",
                "cpu_end",
                "records_in",
                "version",
                "vm_hwm_mb",
            )
        },
    )
    if not ok:
        result["error"] = f"output {got} != reference {expect}"
    if workload in TOPIC_OUTPUT:
        delete_topic(brokers, output)
    else:
        shutil.rmtree(output, ignore_errors=True)
    return result


def run(
    systems: list[str],
    workloads: list[str],
    records: int,
    seed: int,
    repeat: int,
    timeout: float | None,
) -> list[dict]:
    brokers = kafka_up()
    topic, reference = prepare(brokers, records, seed)
    references = {"W1": reference, "W2": reference}
    out: list[dict] = []
    CACHE.mkdir(parents=True, exist_ok=True)
    for workload in workloads:
        todo = []
        for system in systems:
            if (system, workload) in PENDING:
                why = PENDING[(system, workload)]
                say(f"{workload} {system}: pending ({why})")
                out.append({"system": system, "workload": workload, "pending": why})
            elif not Path(python_of(system)).exists():
                say(f"{workload} {system}: no venv at {python_of(system)} (see bench/README.md)")
            else:
                todo.append(system)
        if todo and workload not in references:
            references[workload] = w3_reference(brokers, topic, records)
        # round-robin (run 1 of every system, then run 2, ...): load drift on a shared machine
        # then spreads over all systems instead of favouring whichever ran last
        for i in range(repeat):
            for system in todo:
                say(f"{workload} {system} run {i + 1}/{repeat} ...")
                r = run_once(
                    system,
                    workload,
                    brokers,
                    topic,
                    references[workload],
                    records,
                    str(i + 1),
                    timeout or max(600.0, records / 2_000),
                )
                r["seed"], r["avg_value_bytes"] = seed, reference.get("avg_value_bytes")
                r["machine"] = machine()
                with RESULTS.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                out.append(r)
                if r.get("ok"):
                    say(
                        f"  ok: {r['records_per_s']:,} rec/s, {r['cpu_s_per_m']} CPU s/M, "
                        f"{r['peak_rss_mb']} MB, load {r['loadavg_before']:.1f}"
                    )
                elif "error" in r:
                    say(f"  NOT OK: {r['error'][:500]}")
    return out


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, {platform.platform()}, Python {platform.python_version()}"


# -- report ------------------------------------------------------------------------------------------


def _rss(r: dict) -> float:
    return (r.get("extra") or {}).get("vm_hwm_mb") or r["peak_rss_mb"]


def _rss_over_run(runs: list[dict]) -> str:
    """The largest VmRSS of the runs after 1M, 3M and 5M records (those the runs reached)."""
    marks = [(r.get("extra") or {}).get("rss_at_million_mb") or {} for r in runs]
    out = []
    for m in ("1", "3", "5"):
        seen = [v[m] for v in marks if v.get(m) is not None]
        if seen:
            out.append(f"{max(seen):.0f}")
    return " / ".join(out)


def summarize(rows: list[dict]) -> str:
    """Markdown table: median of the ok runs per (workload, system), ratio to the ceiling."""
    groups: dict[tuple[str, str], list[dict]] = {}
    pending: dict[tuple[str, str], str] = {}
    for r in rows:
        key = (r["workload"], r["system"])
        if "pending" in r:
            pending[key] = r["pending"]
        elif r.get("ok"):
            groups.setdefault(key, []).append(r)
    lines = [
        "| workload | system | version | runs | records/s (median) | vs ceiling | "
        "CPU s / M records (window) | CPU s / M (whole process) | peak RSS MB | "
        "RSS MB at 1M, 3M, 5M records | load avg during runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in WORKLOADS:
        ceiling = groups.get((w, "ceiling"))
        ceil_rate = statistics.median(r["records_per_s"] for r in ceiling) if ceiling else None
        for s in SYSTEMS:
            if (w, s) in pending:
                lines.append(f"| {w} | {s} | | | pending: {pending[(w, s)]} | | | | | | |")
                continue
            g = groups.get((w, s))
            if not g:
                continue
            rate = statistics.median(r["records_per_s"] for r in g)
            ratio = f"{rate / ceil_rate:.0%}" if ceil_rate else ""
            loads = ", ".join(f"{r['loadavg_before']:.1f}" for r in g)
            lines.append(
                f"| {w} | {s} | {g[0].get('version')} | {len(g)} | {rate:,.0f} | {ratio} | "
                f"{statistics.median(r['cpu_s_per_m'] for r in g):.1f} | "
                f"{statistics.median(r['process_cpu_s_per_m'] for r in g):.1f} | "
                f"{max(_rss(r) for r in g):.0f} | {_rss_over_run(g)} | {loads} |"
            )
    if any(w == "W3" for w, _ in groups):
        lines.append("")
        lines.append(
            "W3: the ceiling only consumes and counts (no parse, no output), so W3's "
            '"vs ceiling" is relative to reading the topic and nothing else.'
        )
    return "\n".join(lines)
