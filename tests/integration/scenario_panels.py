"""The four scenarios, run briefly side by side, for the tests that read their dashboards."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tidelake.config import Pipeline, load
from tidelake.demo.ratings_api import create_app as ratings_app
from tidelake.lake import QueryEngine
from tidelake.runtime.runner import run_flows

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("movies", "datalake", "stock", "users")
# real rates where times matter (fractional event times, as a live run writes them)
ENV = {
    "DATALAKE_RATE": "500",
    "DATALAKE_LIMIT": "2500",
    "STOCK_RATE": "0",
    "STOCK_LIMIT": "3000",
    "USERS_RATE": "0",
    "USERS_LIMIT": "1500",
    "TIDELAKE_PSEUDONYMIZE_KEY": "scenario-panels-test-key-0123456789abcdef",
}


def panels_filled(pipeline: Pipeline) -> bool:
    """Every panel's query runs and returns rows (what a person waits for)."""
    try:
        with QueryEngine(pipeline) as engine:
            return all(engine.sql(p.sql).num_rows for p in pipeline.dashboard)
    except Exception:  # noqa: BLE001 - tables not landed yet; the tests report real errors
        return False


@contextmanager
def running_scenarios(tmp: Path, port: int, timeout: float = 90) -> Iterator[dict[str, Pipeline]]:
    """Copy and run the four scenarios at once until each one's panels all have rows (or
    ``timeout``), stop them, and yield their pipelines (the state stays for the tests)."""
    from tidelake.demo import _Server

    with ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        for k, v in ENV.items():
            mp.setenv(k, v)
        mp.setenv("RATINGS_API", f"http://127.0.0.1:{port}")
        api = _Server(ratings_app(rate=300.0), port)
        api.start()
        api.wait_ready()
        stack.callback(api.stop)
        pipelines = {}
        for name in SCENARIOS:
            shutil.copytree(ROOT / "scenarios" / name, tmp / name,
                            ignore=shutil.ignore_patterns(".tidelake"))  # fmt: skip
            pipelines[name] = load(tmp / name / "pipeline.yaml")
        stop = threading.Event()
        errors: dict[str, BaseException] = {}

        def run(name: str) -> None:
            try:
                run_flows(pipelines[name], list(pipelines[name].flows), stop)
            except BaseException as e:  # reported below
                errors[name] = e

        workers = [threading.Thread(target=run, args=(n,), name=n) for n in SCENARIOS]
        for w in workers:
            w.start()
        started = time.monotonic()
        pending = set(SCENARIOS)
        while pending and not errors and time.monotonic() - started < timeout:
            time.sleep(1.0)
            pending = {n for n in pending if not panels_filled(pipelines[n])}
        print(f"scenarios ran {time.monotonic() - started:.0f}s; still empty: {sorted(pending)}")
        stop.set()
        for w in workers:
            w.join(60)
        assert not errors, errors
        yield pipelines
