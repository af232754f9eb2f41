"""``tidelake demo NAME``: run a scenario end to end in one process tree.

Flows run in threads of this process; the scenario's outside world (the movies
ratings API, the markets market API) and the REST API run as in-process uvicorn servers;
the dashboard is a child process. Ctrl-C stops everything after the batches in flight land.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from tidelake import extras
from tidelake.config import Pipeline, load
from tidelake.errors import ConfigError
from tidelake.projects import demo_folder
from tidelake.runtime import schedules
from tidelake.runtime.console import show_live
from tidelake.runtime.runner import Runner, run_flows
from tidelake.runtime.signals import stop_on_signals

LAKE_FLOW = {
    "movies": ("ratings_lake", "ratings flowing into the lake"),
    "datalake": ("transactions_lake", "transactions_lake: data flowing into the lake"),
    "reviews": ("reviews_current", "reviews in the lake"),
    "markets": ("candles", "1-minute candles flowing into the lake"),
}


def command() -> str:
    """How to run ``tidelake`` from here: the bare name when PATH finds this installation's
    script, else that script's path (``.venv/bin/tidelake`` after ``make demo``)."""
    script = Path(sys.executable).with_name("tidelake")
    found = shutil.which("tidelake")
    if not script.exists() or (found and Path(found).resolve() == script.resolve()):
        return "tidelake"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _where(pipeline: Pipeline) -> dict[str, str]:
    """The infrastructure a run of ``pipeline`` uses (resolved URLs, no secrets kept)."""
    from tidelake.lake.catalog import catalog_url, warehouse

    def bare(url: str) -> str:  # user:password@host -> host
        scheme, sep, rest = url.partition("://")
        return scheme + sep + rest.rpartition("@")[2] if sep else url

    return {
        "broker": bare(pipeline.url(pipeline.broker)),
        "database": bare(pipeline.url(pipeline.database)),
        "lake": warehouse(pipeline),
        "lake_catalog": bare(catalog_url(pipeline)),
    }


def check_state(pipeline: Pipeline) -> None:
    """Refuse to reuse a state folder written by a run on other infrastructure.

    ``.tidelake/`` beside the pipeline holds checkpoints and (for an S3 lake) the lake
    catalog; a run on Kafka/PostgreSQL/S3 that found an embedded run's state there would
    resume from positions of another log and append to the other lake's tables.
    """
    marker = pipeline.state_dir / "demo-infrastructure.json"
    now = _where(pipeline)
    if marker.exists():
        try:
            before = json.loads(marker.read_text())
        except ValueError:
            before = None
        if before != now:
            changed = ", ".join(
                f"{k} {before.get(k) if isinstance(before, dict) else '?'} -> {v}"
                for k, v in now.items()
                if not isinstance(before, dict) or before.get(k) != v
            )
            raise ConfigError(
                f"{pipeline.state_dir} holds the state of a run on other infrastructure "
                f"({changed}); its checkpoints and lake catalog do not apply to this one. "
                f"Move it away or delete it (rm -rf {pipeline.state_dir}), then run again"
            )
    else:
        pipeline.state_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(now, indent=2) + "\n")


class _Server(threading.Thread):
    """A uvicorn server in a background thread, stopped with ``stop()``."""

    def __init__(self, app: object, port: int) -> None:
        import uvicorn

        super().__init__(daemon=True, name=f"http-{port}")
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)

    def run(self) -> None:
        self.server.run()

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.join(5)


def _announce_when_flowing(
    runners: list[Runner],
    flow: tuple[str, str],
    say: Callable[[str], None],
    stop: threading.Event,
) -> None:
    name, message = flow
    target = next((r for r in runners if r.name == name), None)
    while target is not None and not stop.wait(0.2):
        if target.metrics.records_out > 0:
            say(f"[green]✓ {message}[/green]")
            return


def run_demo(
    name: str,
    api_port: int = 8000,
    dashboard_port: int = 8501,
    ratings_port: int = 8800,
    market_port: int = 8801,
    dashboard: bool = True,
    console: Console | None = None,
    directory: Path | None = None,
) -> None:
    """Run scenario ``name`` in ``directory`` (see ``demo_folder``) until Ctrl-C/SIGTERM."""
    console = console or Console(stderr=True)
    if dashboard:
        extras.require("dashboard", "the demo's dashboard", " (or run with --no-dashboard)")
    path = demo_folder(name, directory)
    servers: list[_Server] = []
    if name == "movies" and "RATINGS_API" not in os.environ:
        from tidelake.demo.ratings_api import create_app as ratings_app

        servers.append(_Server(ratings_app(), ratings_port))
        os.environ["RATINGS_API"] = f"http://127.0.0.1:{ratings_port}"
    own_reviews_app = name == "reviews" and "REVIEWS_APP" not in os.environ
    if own_reviews_app:
        os.environ["REVIEWS_APP"] = f"http://127.0.0.1:{ratings_port}"
        os.environ.setdefault("ALERTS_WEBHOOK", f"http://127.0.0.1:{ratings_port}/alerts")
    if name == "markets" and "MARKET_API" not in os.environ:
        from tidelake.demo.market_api import create_app as market_app

        servers.append(_Server(market_app(), market_port))
        os.environ["MARKET_API"] = f"http://127.0.0.1:{market_port}"
    pipeline: Pipeline = load(path)
    check_state(pipeline)
    if own_reviews_app:
        from tidelake.demo.reviews_app import create_app as reviews_app
        from tidelake.runtime.runner import prepare_database

        prepare_database(pipeline)
        servers.append(_Server(reviews_app(pipeline.url(pipeline.database)), ratings_port))

    from tidelake.serve.api import create_app

    servers.append(_Server(create_app(pipeline), api_port))
    for s in servers:
        s.start()
    for s in servers:
        s.wait_ready()
    proc = None
    if dashboard:
        from tidelake.serve.dashboard.launch import launch
        from tidelake.serve.dashboard.launch import stop as stop_dashboard

        proc = launch(path, port=dashboard_port)
    console.print(f"[bold]tidelake demo {name}[/bold] — {path}")
    console.print(f"  state        {pipeline.state_dir} (delete it to start over)")
    if name == "movies":
        console.print(f"  ratings API  {os.environ['RATINGS_API']}/rating")
    if name == "reviews":
        console.print(f"  reviews app  {os.environ['REVIEWS_APP']}/docs (POST /reviews, the site)")
    if name == "markets":
        console.print(f"  market API   {os.environ['MARKET_API']}/ticks")
    console.print(f"  REST API     http://127.0.0.1:{api_port}/docs")
    if dashboard:
        console.print(f"  dashboard    http://127.0.0.1:{dashboard_port}")
    if pipeline.forms:
        from tidelake.serve.users import Users

        where = "on the dashboard or at " if dashboard else "at "
        console.print(f"  forms        {where}http://127.0.0.1:{api_port}/forms, after a login")
        operators = [u.name for u in Users(pipeline).list() if u.role in ("operator", "admin")]
        if operators:
            console.print(f"  operators    {', '.join(operators)}", highlight=False)
        else:
            console.print(
                f"  operators    none yet: {command()} users add {path} NAME --role operator",
                highlight=False,
            )
    example = next(iter(pipeline.queries), '"SELECT count(*) FROM ratings"')
    console.print(f"  query        {command()} query {path} {example}")
    console.print("  Ctrl-C stops everything.\n")

    stop, done = threading.Event(), threading.Event()
    stop_on_signals(stop)
    if name == "reviews":
        from tidelake.demo.reviews_app import post_traffic

        threading.Thread(
            target=post_traffic, args=(os.environ["REVIEWS_APP"], stop, 2.0), daemon=True
        ).start()

    def started(runners: list[Runner]) -> None:
        threading.Thread(
            target=show_live, args=([r.metrics for r in runners], done, console), daemon=True
        ).start()
        if name in LAKE_FLOW:
            threading.Thread(
                target=_announce_when_flowing,
                args=(runners, LAKE_FLOW[name], console.print, stop),
                daemon=True,
            ).start()

    if pipeline.schedules:
        schedules.start(pipeline, stop, lambda line: console.print(line, markup=False))
    try:
        flows = [f for f in pipeline.flows if f not in pipeline.scheduled()]
        run_flows(pipeline, flows, stop, on_start=started)
    finally:
        done.set()
        if proc is not None:
            stop_dashboard(proc)
        for s in servers:
            s.stop()
        console.print("demo stopped")
