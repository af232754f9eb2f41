"""Every command example in the README and in the ``--help`` texts runs as written.

README code blocks run as scripts, line by line, each block in a fresh folder; ``Example:``
lines of ``tidelake --help`` texts run in one folder where the demo ran and the example
files (``pipeline.yaml``, ``p.yaml``) exist. Commands that keep running (``demo``,
``serve``, ``dashboard``, ``run`` of an endless flow) must come up, then stop cleanly on
Ctrl-C. Commands that start or stop this machine's shared services (``infra up/down/
prefetch``) are only parsed: the integration fixtures and tests/integration/test_infra.py
run them on their own ports.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import typer
from browser import free_port

from tidelake.cli import app

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SERVICES = ("tidelake infra up", "tidelake infra down", "tidelake infra prefetch")
# a README block that needs Kafka, a database, Debezium and S3 (test_*_real_infra.py run them)
REAL_INFRA = "TIDELAKE_BROKER=kafka://"
# examples that run and end with a one-line error by design on embedded defaults
EXPECTED_ERRORS = {
    "tidelake cdc drop-slot": "uses engine 'sqlite', which has no slot",
}
PIPELINE = """\
name: example
flows:
  land:
    source: {type: generator, kind: transactions, seed: 1, limit: 200}
    sink: {type: table, table: sales}
"""
ORDERS = "order_id,product,quantity,unit_price\n1,apple,2,1.5\n2,pear,two,2.0\n3,plum,1,3.0\n"
P_YAML = """\
name: orders
flows:
  orders_file:
    source: {type: file, path: data/orders.csv}
    sink: {type: topic, topic: orders}
  orders_land:
    source: {type: topic, topic: orders}
    transforms:
      - {type: sql, query: "SELECT order_id, product, quantity * unit_price AS amount FROM batch"}
    sink: {type: table, table: amounts, mode: upsert, key: [order_id]}
"""


def readme_blocks() -> list[tuple[bool, list[str]]]:
    """(needs real infrastructure, its ``tidelake`` command lines) of each bash code block of
    the README, comments dropped (``make``, ``psql``, ``export`` lines are not ours)."""
    blocks: list[tuple[bool, list[str]]] = []
    raw: list[str] = []
    inside = False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            ours = [c for c in raw if re.match(r"^([A-Z_]+=\S+ )*tidelake ", c)]
            if inside and ours:
                blocks.append((any(REAL_INFRA in c for c in raw), ours))
            inside, raw = not inside and line.strip() in ("```bash", "```sh"), []
            continue
        if inside:
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                raw.append(command)
    return blocks


def help_examples() -> list[str]:
    """Every ``Example:`` of every command's help (continued lines joined)."""
    out = []

    def walk(command: object) -> None:
        subs = getattr(command, "commands", None)
        if subs:
            for sub in subs.values():
                walk(sub)
            return
        text = getattr(command, "help", "") or ""
        for m in re.finditer(r"Example:\s*(.+(?:\n(?!\s*\n).+)*)", text):
            out.append(" ".join(part.strip() for part in m.group(1).splitlines()))

    walk(typer.main.get_command(app))
    return out


def _env(folder: Path) -> dict[str, str]:
    return os.environ | {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "TIDELAKE_SCENARIOS": str(folder / "scenarios"),
        "TIDELAKE_PSEUDONYMIZE_KEY": "docs-examples-key-0123456789abcdef",
        "COLUMNS": "100",
    }


def _long_running(command: str) -> tuple[str, str | None]:
    """The command with free ports, and the URL that answers once it is up (None: a run)."""
    if " demo " in f" {command} ":
        api = free_port()
        ports = f"--api-port {api} --dashboard-port {free_port()} --ratings-port {free_port()}"
        return f"{command} {ports}", f"http://127.0.0.1:{api}/api/tables/lake.ratings"
    if " serve " in f" {command} ":
        port = free_port()
        return f"{command} --port {port}", f"http://127.0.0.1:{port}/healthz"
    if " dashboard " in f" {command} ":
        port = free_port()
        return f"{command} --port {port}", f"http://127.0.0.1:{port}/_stcore/health"
    return command, None


def _up(url: str) -> bool:
    try:
        r = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return False
    if url.endswith("/lake.ratings"):  # the demo is up once ratings reached the lake
        return r.status_code == 200 and (r.json().get("rows") or 0) > 0
    return r.status_code == 200


def _flows_running(folder: Path, since: float, deadline: float) -> bool:
    """A ``run`` is up once its flows publish their metrics (or 30 s passed): Ctrl-C before
    that would only interrupt the interpreter's start-up on a loaded machine."""
    published = (p.stat().st_mtime for p in folder.glob("**/.tidelake/metrics/*.json"))
    return any(t > since for t in published) or time.monotonic() > deadline - 120


def run_example(command: str, folder: Path) -> None:
    """Run one example in ``folder``; fail with its output unless it works as documented."""
    if command.startswith(SERVICES):
        words = shlex.split(command)[1:]
        typer.main.get_command(app).make_context("tidelake", words)  # parses; never runs
        return
    command, url = _long_running(command)
    proc = subprocess.Popen(["bash", "-o", "pipefail", "-c", command], cwd=folder,
                            env=_env(folder), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    began = time.time()
    deadline = time.monotonic() + 150
    interrupted = False
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        started = time.monotonic() > deadline - 145  # 5 s: past start-up in any case
        ready = started and (_up(url) if url else _flows_running(folder, began, deadline))
        if ready and (url or " run " in f" {command} "):
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
            interrupted = True
            break
    try:
        output, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{command!r} did not end{' after Ctrl-C' * interrupted}:\n{output}")
    expected = next((m for c, m in EXPECTED_ERRORS.items() if command.startswith(c)), None)
    if expected:
        assert proc.returncode == 2 and expected in output, (command, output)
    else:
        assert proc.returncode == 0, f"{command!r} exited {proc.returncode}:\n{output}"
    assert "Traceback" not in output, (command, output)
    print(f"ok {'(stopped with Ctrl-C) ' * interrupted}{command}")


def _folder(tmp: Path) -> Path:
    """A folder with the scenarios and the files examples name (pipeline.yaml, p.yaml)."""
    tmp.mkdir(parents=True)
    shutil.copytree(ROOT / "scenarios", tmp / "scenarios",
                    ignore=shutil.ignore_patterns(".tidelake"))  # fmt: skip
    (tmp / "pipeline.yaml").write_text(PIPELINE)
    (tmp / "p.yaml").write_text(P_YAML)  # the README's orders example, with a bad quantity
    (tmp / "data").mkdir()
    (tmp / "data" / "orders.csv").write_text(ORDERS)
    return tmp


def test_every_command_example_runs(tmp_path: Path) -> None:
    blocks = readme_blocks()
    assert blocks, "no bash blocks found in the README"
    ran: dict[str, Path] = {}  # example -> the folder it ran in
    for i, (real_infra, block) in enumerate(blocks):
        folder = _folder(tmp_path / f"block{i}")
        for line in block:
            if real_infra:  # parsed only: test_*_real_infra.py run them on real services
                words = shlex.split(line)
                typer.main.get_command(app).make_context("tidelake", words[1:])
                continue
            if " p.yaml " in line and not (folder / ".tidelake").exists():
                run_example("tidelake run p.yaml", folder)  # dead letters to look at
            run_example(line, folder)
            ran.setdefault(line, folder)

    examples = help_examples()
    assert len(examples) >= 20, examples
    folder = _folder(tmp_path / "help")
    # what the help examples read: the demo's lake (from the README's run of the same
    # command, else run here), the stock scenario's log, p.yaml's dead letters
    demo = next(e for e in examples if e.startswith("tidelake demo"))
    if demo in ran:
        shutil.copytree(ran[demo] / "tidelake-demo", folder / "tidelake-demo")
    else:
        run_example(demo, folder)
    run_example("STOCK_LIMIT=50 STOCK_RATE=0 tidelake run scenarios/stock/pipeline.yaml", folder)
    run_example("tidelake run p.yaml", folder)
    for example in examples:
        if example != demo:
            run_example(example, folder)
