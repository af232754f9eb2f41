"""W2 scale-out: ``tidelake run --flow w2 --workers N`` on a many-partition topic, N side by side.

Each run starts the real CLI (one process for ``--workers 1``, else a supervisor and N worker
processes in one consumer group, each landing its partitions in the same Iceberg table) and
polls the table's catalog until every output row has landed, then stops the run (SIGTERM)
and verifies the lake: count, checksum and distinct ids equal the reference.

Measured between the CLI's start and the moment the last row is visible in the catalog:
wall time (interpreter start, imports and the group join included), CPU of the supervisor
and of every worker from ``/proc/<pid>/stat`` (start-up included), each worker's VmHWM, the
broker's CPU (``/proc/<kafka pid>/stat``) and the whole machine's busy CPU (``/proc/stat``),
so the report can say how much of the cores the broker and everything else took.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from bench.common import DEFAULT_KEY, KEY_ENV
from bench.harness import CACHE, REPO, RESULTS, RUNS, machine, prepare, say, verify_parquet
from bench.workers.tidelake import PIPELINE, flow_yaml
from tidelake.runtime.metrics import read_all

TICK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.5
TABLE = "users_w2"


# -- /proc --------------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float | None:
    """user+sys CPU seconds of ``pid`` (all threads), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def proc_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK


@dataclass
class Sampled:
    """The last CPU and VmHWM read of every process seen (a worker's, until it exits), and
    each worker's CPU and the time when its published metrics first showed records read."""

    cpu: dict[int, float] = field(default_factory=dict)
    hwm: dict[int, float] = field(default_factory=dict)
    first_cpu: dict[int, float] = field(default_factory=dict)
    first_read: dict[int, float] = field(default_factory=dict)

    def sample(self, pids: list[int]) -> None:
        for pid in pids:
            cpu, hwm = proc_cpu(pid), proc_hwm_mb(pid)
            if cpu is not None:
                self.cpu[pid] = cpu
            if hwm is not None:
                self.hwm[pid] = hwm

    def reading(self, metrics: Path) -> None:
        """Runners publish their counters about once a second: up to ~1 s late."""
        for m in read_all(metrics):
            pid = int(m.get("pid", 0))
            if m.get("records_in") and pid not in self.first_cpu:
                cpu = proc_cpu(pid)
                if cpu is not None:
                    self.first_cpu[pid], self.first_read[pid] = cpu, time.time()


# -- the lake, read from its SQLite catalog (no pyiceberg in the polling loop) -------------------


def landed(catalog: Path) -> dict | None:
    """The table's current snapshots: rows in total, commits, first and last commit times."""
    if not catalog.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute(
                "SELECT metadata_location FROM iceberg_tables WHERE table_name = ?", (TABLE,)
            ).fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:  # the catalog's tables are not created yet
        return None
    if row is None:
        return None
    try:
        meta = json.loads(Path(urlparse(row[0]).path).read_text())
    except OSError:  # replaced by a newer commit (old metadata files are deleted)
        return None
    snaps = [s for s in meta.get("snapshots", []) if int(s["summary"].get("added-records", 0))]
    current = next(
        (s for s in meta.get("snapshots", []) if s["snapshot-id"] == meta["current-snapshot-id"]),
        None,
    )
    if current is None or not snaps:
        return None
    return {
        "rows": int(current["summary"].get("total-records", 0)),
        "data_files": int(current["summary"].get("total-data-files", 0)),
        "commits": len(meta["snapshots"]),
        "data_commits": len(snaps),
        "first_data_commit": snaps[0]["timestamp-ms"] / 1000,
        "last_commit": current["timestamp-ms"] / 1000,
    }


# -- one run -----------------------------------------------------------------------------------


def scale_once(
    workers: int, brokers: str, topic: str, reference: dict, records: int, timeout: float
) -> dict:
    from tidelake import infra

    run_id = f"tidelake_W2scale_{time.strftime('%Y%m%d_%H%M%S')}_w{workers}"
    workdir = RUNS / run_id
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "out"
    pipeline = workdir / "pipeline.yaml"
    pipeline.write_text(flow_yaml(PIPELINE.read_text(), "w2"))
    group = f"bench.{run_id}"
    env = {
        **os.environ,
        KEY_ENV: os.environ.get(KEY_ENV, DEFAULT_KEY),
        "BENCH_BROKER": f"kafka://{brokers}",
        "BENCH_INPUT": topic,
        "BENCH_GROUP": group,
        "BENCH_LAKE": f"file://{out}",
        "BENCH_PIPELINE": group,
        "PYTHONUNBUFFERED": "1",
    }
    python = str(REPO / ".venv" / "bin" / "python")
    cmd = [python, "-m", "tidelake.cli", "run", str(pipeline), "--flow", "w2"]
    cmd += ["--workers", str(workers)]
    kafka = infra.status()["kafka"]["pid"]
    catalog = workdir / "lake_catalog.db"
    expect_rows = reference["count"]
    seen = Sampled()
    load0 = os.getloadavg()
    kafka0, busy0, t0 = proc_cpu(kafka), machine_busy_s(), time.time()
    with open(workdir / "worker.log", "wb") as logf:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )
    lake, t_landed, exited = None, None, None
    while time.time() - t0 < timeout and exited is None:
        seen.sample([proc.pid, *(children(proc.pid) if workers > 1 else [])])
        seen.reading(workdir / ".tidelake" / "metrics")
        lake = landed(catalog) or lake
        if lake and lake["rows"] >= expect_rows:
            t_landed = time.time()
            break
        exited = _reaped(proc.pid)
        time.sleep(POLL_S)
    # the moment the last row is visible: what the run cost until then
    kafka1, busy1, load1 = proc_cpu(kafka), machine_busy_s(), os.getloadavg()
    worker_pids = [p for p in seen.cpu if p != proc.pid] if workers > 1 else [proc.pid]
    seen.sample([proc.pid, *worker_pids])
    shares = per_worker(workdir)  # before the stop: its rebalances move the partitions
    if exited is None:
        os.kill(proc.pid, signal.SIGTERM)  # the supervisor passes it on to its workers
        deadline = time.time() + 60
        while (exited := _reaped(proc.pid)) is None and time.time() < deadline:
            time.sleep(0.1)
        if exited is None:
            os.killpg(proc.pid, signal.SIGKILL)
            exited = _reaped(proc.pid, block=True)
    assert exited is not None
    status, ru = exited
    wall = (t_landed or time.time()) - t0
    result: dict = {
        "system": "tidelake",
        "workload": "W2scale",
        "records": records,
        "run_id": run_id,
        "command": " ".join(cmd),
        "workers": workers,
        "topic": topic,
        "exit": status,
        "loadavg_before": load0[0],
        "loadavg_after": load1[0],
    }
    if t_landed is None or lake is None:
        tail = (workdir / "worker.log").read_text(errors="replace")[-3000:]
        result.update(ok=False, error=f"not landed ({lake}), exit {status}: {tail}")
        say(f"  NOT LANDED; log: {workdir / 'worker.log'}\n{tail[-1500:]}")
        return result
    got = verify_parquet("tidelake", str(out), group)
    ok = (
        got["count"] == reference["count"]
        and got["checksum"] == reference["checksum"]
        and got["distinct_ids"] == got["count"]
    )
    supervisor_cpu = seen.cpu[proc.pid] if workers > 1 else 0.0
    worker_cpu = [seen.cpu[p] for p in worker_pids]
    cpu = supervisor_cpu + sum(worker_cpu)
    kafka_cpu = (kafka1 or 0.0) - (kafka0 or 0.0)
    # the window the single-worker harness measures: first record read -> all landed
    first_read = min(seen.first_read.values(), default=t0)
    work_cpu = sum(seen.cpu[p] - seen.first_cpu.get(p, 0.0) for p in worker_pids)
    result.update(
        ok=ok,
        output_count=got["count"],
        output_checksum=got["checksum"],
        distinct_ids=got["distinct_ids"],
        wall_s=round(wall, 2),
        startup_s=round(first_read - t0, 2),
        first_commit_s=round(lake["first_data_commit"] - t0, 2),
        records_per_s=round(records / wall),
        records_per_s_from_first_read=round(records / (t_landed - first_read)),
        cpu_s=round(cpu, 2),
        cpu_s_per_m=round(cpu / records * 1e6, 2),
        # each worker's CPU from its first record read (its start-up left out)
        work_cpu_s_per_m=round(work_cpu / records * 1e6, 2),
        supervisor_cpu_s=round(supervisor_cpu, 2),
        worker_cpu_s=[round(c, 2) for c in worker_cpu],
        worker_peak_rss_mb=[seen.hwm.get(p) for p in worker_pids],
        worker_processes_seen=len(worker_pids),
        # wait4: the supervisor and every worker it reaped, start to exit (shutdown included)
        process_cpu_s=round(ru.ru_utime + ru.ru_stime, 2),
        broker_cpu_s=round(kafka_cpu, 2),
        broker_cores=round(kafka_cpu / wall, 2),
        machine_busy_cores=round((busy1 - busy0) / wall, 2),
        commits=lake["commits"],
        data_commits=lake["data_commits"],
        data_commits_per_s=round(
            lake["data_commits"] / max(lake["last_commit"] - lake["first_data_commit"], 1e-3), 2
        ),
        # commits lost to another worker and retried (their final published counters)
        commit_retries=sum(w["commit_retries"] for w in per_worker(workdir)),
        # Parquet files no snapshot references (a retry that wrote its batch again)
        orphan_files=sum(1 for _ in out.rglob("*.parquet")) - lake["data_files"],
        per_worker=shares,
        machine=machine(),
    )
    if not ok:
        result["error"] = f"output {got} != reference {reference}"
    shutil.rmtree(out, ignore_errors=True)  # ~80 bytes a row; the log and catalog stay
    return result


def _reaped(pid: int, block: bool = False) -> tuple[int, os.struct_rusage] | None:
    """(exit code, rusage of it and its reaped children: the workers) once ``pid`` ended."""
    done, status, ru = os.wait4(pid, 0 if block else os.WNOHANG)
    return (os.waitstatus_to_exitcode(status), ru) if done else None


def per_worker(workdir: Path) -> list[dict]:
    """Rows read and partitions owned, per worker (from the metrics they published)."""
    rows = []
    for p in sorted((workdir / ".tidelake" / "metrics").glob("*.json")):
        m = json.loads(p.read_text())
        rows.append(
            {
                "worker": m.get("worker") or "(in-process)",
                "records_in": m["records_in"],
                "batches": m["batches"],
                "partitions": sorted(m.get("partitions", {})),
                "commit_retries": m.get("counts", {}).get("lake_commit_retries", 0),
            }
        )
    return rows


def run_scale(
    records: int, seed: int, partitions: int, counts: list[int], timeout: float | None
) -> list[dict]:
    from bench.harness import kafka_up

    brokers = kafka_up()
    topic, reference = prepare(brokers, records, seed, partitions)
    CACHE.mkdir(parents=True, exist_ok=True)
    out = []
    for n in counts:
        say(f"W2 scale: {n} worker(s) on {topic} ...")
        r = scale_once(
            n, brokers, topic, reference, records, timeout or max(600.0, records / 2_000)
        )
        r["partitions"] = partitions
        with RESULTS.open("a") as f:
            f.write(json.dumps(r) + "\n")
        out.append(r)
        if r.get("ok"):
            say(
                f"  ok: {r['records_per_s']:,} rec/s, {r['cpu_s_per_m']} CPU s/M, "
                f"broker {r['broker_cores']} cores, load {r['loadavg_before']:.1f}"
            )
        else:
            say(f"  NOT OK: {r.get('error', '')[:500]}")
        for w in r.get("per_worker", []):
            say(f"    {w['worker']}: {w['records_in']:,} records in, {w['partitions']}")
    return out


# -- report ------------------------------------------------------------------------------------


def summarize(rows: list[dict]) -> str:
    """Markdown table, one row per ok run, ordered by workers."""
    lines = [
        "| workers | records/s (start -> all landed) | records/s (first record read -> all "
        "landed) | wall s | start-up s | CPU s / M (workers + supervisor) | CPU s / M (workers, "
        "from their first record) | CPU s per worker | peak RSS MB per worker | broker cores | "
        "machine busy cores | data commits | commit retries | records in per worker | "
        "load avg before |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted((r for r in rows if r.get("ok")), key=lambda r: (r["workers"], r["run_id"])):
        cpu = ", ".join(f"{c:.1f}" for c in r["worker_cpu_s"])
        if r["workers"] > 1:
            cpu += f" (+ supervisor {r['supervisor_cpu_s']:.1f})"
        rss = ", ".join(f"{m:.0f}" for m in r["worker_peak_rss_mb"] if m is not None)
        shares = ", ".join(f"{w['records_in']:,}" for w in r["per_worker"])
        lines.append(
            f"| {r['workers']} | {r['records_per_s']:,} | {r['records_per_s_from_first_read']:,} "
            f"| {r['wall_s']:.1f} | {r['startup_s']:.1f} | {r['cpu_s_per_m']:.1f} | "
            f"{r['work_cpu_s_per_m']:.1f} | {cpu} | {rss} | {r['broker_cores']:.2f} | "
            f"{r['machine_busy_cores']:.2f} | {r['data_commits']} | {r['commit_retries']} | "
            f"{shares} | {r['loadavg_before']:.2f} |"
        )
    return "\n".join(lines)
