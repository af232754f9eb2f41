"""python -m bench run --all | --workload W1 --system bytewax [--records N] [--runs 3]

python -m bench report [--records N] [--after YYYYmmdd_HHMMSS] [--workload W3] prints the
results table (median per system; W1, W2 and W3 rows, plus what is pending).
python -m bench prepare --records N [--partitions 4]  produces the input topic only.
python -m bench scale --records N --workers 1 2 4  W2 with N tidelake workers on a 4-partition
topic, one run per worker count (``report --scale`` prints those runs again).
python -m bench setup [--system S]  creates the peers' pinned venvs (``run`` does it when needed).
"""

from __future__ import annotations

import argparse
import json
import sys

from bench import harness, venvs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run workloads on systems")
    r.add_argument("--all", action="store_true", help="every workload on every system")
    r.add_argument("--workload", action="append", choices=harness.WORKLOADS)
    r.add_argument("--system", action="append", choices=harness.SYSTEMS)
    r.add_argument("--records", type=int, default=5_000_000)
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--runs", type=int, default=3, help="repetitions (the table shows the median)")
    r.add_argument("--timeout", type=float, default=None, help="seconds per run before kill")
    pr = sub.add_parser("prepare", help="produce the input topic (cached) and its reference")
    pr.add_argument("--records", type=int, default=5_000_000)
    pr.add_argument("--seed", type=int, default=42)
    pr.add_argument("--partitions", type=int, default=1, help="topic bench.users.N.sSEED.pP")
    sc = sub.add_parser("scale", help="W2 with 1, 2, 4 tidelake workers on a P-partition topic")
    sc.add_argument("--records", type=int, default=2_000_000)
    sc.add_argument("--seed", type=int, default=42)
    sc.add_argument("--partitions", type=int, default=4)
    sc.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    sc.add_argument("--timeout", type=float, default=None, help="seconds per run before stop")
    st = sub.add_parser("setup", help="create the peers' pinned virtual environments")
    st.add_argument("--system", action="append", choices=harness.SYSTEMS)
    rep = sub.add_parser("report", help="results table from the recorded runs")
    rep.add_argument("--records", type=int, default=None, help="only runs with this input size")
    rep.add_argument(
        "--after", default=None, help="only runs whose run_id timestamp >= this (YYYYmmdd_HHMMSS)"
    )
    rep.add_argument("--before", default=None, help="only runs whose run_id timestamp < this")
    rep.add_argument("--workload", action="append", choices=harness.WORKLOADS)
    rep.add_argument("--scale", action="store_true", help="the W2 scale-out runs (`scale`)")
    a = p.parse_args(argv)
    if a.cmd == "prepare":
        harness.prepare(harness.kafka_up(), a.records, a.seed, a.partitions)
        return 0
    if a.cmd == "scale":
        from bench import scale

        rows = scale.run_scale(a.records, a.seed, a.partitions, a.workers, a.timeout)
        print(scale.summarize(rows))
        return 0 if all(r.get("ok") for r in rows) else 1
    if a.cmd == "setup":
        for system in a.system or harness.DEFAULT_SYSTEMS:
            if venvs.needs_venv(system):
                print(venvs.ensure(system, harness.VENVS))
        return 0
    if a.cmd == "report":
        rows = [json.loads(line) for line in harness.RESULTS.read_text().splitlines() if line]
        if a.records:
            rows = [r for r in rows if r.get("records") == a.records or "pending" in r]
        if a.after:
            rows = [r for r in rows if "pending" in r or r["run_id"].split("_", 2)[2] >= a.after]
        if a.before:
            rows = [r for r in rows if "pending" in r or r["run_id"].split("_", 2)[2] < a.before]
        if a.scale:
            from bench import scale

            print(scale.summarize([r for r in rows if r["workload"] == "W2scale"]))
            return 0
        rows = [r for r in rows if r["workload"] != "W2scale"]
        # what cannot run (yet) shows as pending rows: e.g. faust W3, tidelake W3 until
        # src/tidelake/transforms/window.py exists
        rows += [
            {"system": system, "workload": workload, "pending": why}
            for (system, workload), why in harness.PENDING.items()
            if system in harness.DEFAULT_SYSTEMS
        ]
        if a.workload:
            rows = [r for r in rows if r["workload"] in a.workload]
        print(harness.summarize(rows))
        return 0
    if not a.all and not a.system and not a.workload:
        p.error("give --all, or --workload and/or --system")
    systems = harness.DEFAULT_SYSTEMS if a.all or not a.system else a.system
    workloads = harness.WORKLOADS if a.all or not a.workload else a.workload
    for system in systems:
        if venvs.needs_venv(system):
            venvs.ensure(system, harness.VENVS)
    rows = harness.run(systems, workloads, a.records, a.seed, a.runs, a.timeout)
    print(harness.summarize(rows))
    return 0 if all(r.get("ok") or "pending" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
