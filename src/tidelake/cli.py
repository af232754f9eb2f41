"""The ``tidelake`` command line."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tidelake import __version__
from tidelake.errors import TidelakeError

app = typer.Typer(
    help="Real-time data pipelines: ingest, log, transform, land exactly once, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Inspect and manage the pipeline's log.", no_args_is_help=True)
infra_app = typer.Typer(help="Start and stop local services (Kafka, PostgreSQL, ...).", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(infra_app, name="infra")

console = Console()
err = Console(stderr=True)

PipelineArg = Annotated[Path, typer.Argument(help="pipeline file (YAML)", show_default=False)]


def _load(path: Path):  # noqa: ANN202 - returns tidelake.config.Pipeline
    from tidelake.config import load

    return load(path)


def _fail(e: TidelakeError) -> None:
    err.print(f"[red]error:[/red] {e}", highlight=False, markup=True)
    raise typer.Exit(2)


@app.command()
def version() -> None:
    """Print the tidelake version.  Example: tidelake version"""
    console.print(__version__)


@app.command()
def validate(pipeline: PipelineArg) -> None:
    """Check a pipeline file and report every problem as file:line: key: problem (hint).

    Example: tidelake validate scenarios/movies/pipeline.yaml
    """
    try:
        p = _load(pipeline)
    except TidelakeError as e:
        _fail(e)
    console.print(f"[green]ok[/green] {pipeline}: pipeline {p.name!r}, flows: {', '.join(p.flows)}")


@app.command()
def run(
    pipeline: PipelineArg,
    flow: Annotated[list[str] | None, typer.Option("--flow", "-f", help="run only this flow (repeatable)")] = None,
) -> None:
    """Run the flows of a pipeline until their sources end or Ctrl-C (the batch in flight finishes).

    Example: tidelake run scenarios/quickstart/pipeline.yaml --flow ingest
    """
    from tidelake.runtime.console import show_live
    from tidelake.runtime.runner import FlowRunner, run_flows

    try:
        p = _load(pipeline)
        names = flow or list(p.flows)
        stop = threading.Event()
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        view: list[threading.Thread] = []

        def started(runners: list[FlowRunner]) -> None:
            t = threading.Thread(
                target=show_live, args=([r.metrics for r in runners], done, err), daemon=True
            )
            t.start()
            view.append(t)

        t0 = time.monotonic()
        try:
            runners = run_flows(p, names, stop, on_start=started)
        finally:
            done.set()
            for t in view:
                t.join(2)
    except TidelakeError as e:
        _fail(e)
    total = sum(r.metrics.records_out for r in runners)
    err.print(f"done: {total:,} rows landed in {time.monotonic() - t0:.1f}s")


@topics_app.command("list")
def topics_list(pipeline: PipelineArg) -> None:
    """List topics with partitions and end offsets.  Example: tidelake topics list pipeline.yaml"""
    from rich.table import Table

    from tidelake.broker import connect

    try:
        p = _load(pipeline)
        broker = connect(p.url(p.broker))
    except TidelakeError as e:
        _fail(e)
    t = Table("topic", "partitions", "records (end offsets)")
    for name, n in broker.topics().items():
        ends = broker.end_offsets(name)
        t.add_row(name, str(n), f"{sum(ends.values()):,}")
    console.print(t)
    broker.close()


@topics_app.command("create")
def topics_create(
    pipeline: PipelineArg,
    topic: Annotated[str, typer.Argument(help="topic name")],
    partitions: Annotated[int, typer.Option(help="partition count")] = 1,
) -> None:
    """Create a topic (no-op if it exists).  Example: tidelake topics create p.yaml ratings --partitions 4"""
    from tidelake.broker import connect

    try:
        p = _load(pipeline)
        broker = connect(p.url(p.broker))
        broker.create_topic(topic, partitions)
    except TidelakeError as e:
        _fail(e)
    console.print(f"topic {topic} ready ({broker.topics().get(topic)} partitions)")
    broker.close()


@topics_app.command("tail")
def topics_tail(
    pipeline: PipelineArg,
    topic: Annotated[str, typer.Argument(help="topic name")],
    count: Annotated[int, typer.Option("-n", help="stop after this many records (0 = follow)")] = 10,
) -> None:
    """Print records of a topic from the beginning, without committing offsets.

    Example: tidelake topics tail p.yaml ratings -n 5
    """
    import uuid

    from tidelake.broker import connect

    try:
        p = _load(pipeline)
        broker = connect(p.url(p.broker))
    except TidelakeError as e:
        _fail(e)
    consumer = broker.consumer(f"tidelake-tail-{uuid.uuid4().hex[:8]}", [topic])
    seen = 0
    try:
        while count == 0 or seen < count:
            batch = consumer.poll(count - seen if count else 500, 1.0)
            for part, off, val in zip(batch.partitions, batch.offsets, batch.values, strict=True):
                text = val.decode("utf-8", "replace") if val is not None else "null"
                console.print(f"[dim]{topic}/{part}@{off}[/dim] {text}", highlight=False)
            seen += len(batch)
            if not len(batch) and count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        broker.close()


@infra_app.command("up")
def infra_up(
    services: Annotated[list[str] | None, typer.Argument(help="kafka, postgres, connect, s3")] = None,
    with_: Annotated[list[str] | None, typer.Option("--with", help="add a service (e.g. connect)")] = None,
) -> None:
    """Start local services natively on loopback (default: kafka and postgres).

    Example: tidelake infra up --with connect
    """
    from tidelake import infra

    wanted = list(services or ["kafka", "postgres"]) + list(with_ or [])
    try:
        urls = infra.up(wanted)
    except TidelakeError as e:
        _fail(e)
    for name, url in urls.items():
        console.print(f"[green]up[/green] {name:9} {url}")


@infra_app.command("down")
def infra_down(
    services: Annotated[list[str] | None, typer.Argument(help="services to stop (default: all)")] = None,
) -> None:
    """Stop local services started by `infra up`.  Example: tidelake infra down"""
    from tidelake import infra

    infra.down(services or None)
    console.print("stopped")


@infra_app.command("prefetch")
def infra_prefetch(
    services: Annotated[list[str] | None, typer.Argument(help="services (default: all)")] = None,
) -> None:
    """Download and build services without starting them (cached for later runs).

    Example: tidelake infra prefetch kafka connect
    """
    from tidelake import infra

    try:
        infra.ensure_cached(services or list(infra.SERVICES))
    except TidelakeError as e:
        _fail(e)


@infra_app.command("status")
def infra_status() -> None:
    """Show which local services run, their URLs and logs.  Example: tidelake infra status"""
    from rich.table import Table

    from tidelake import infra

    t = Table("service", "running", "pid", "url", "log")
    for name, s in infra.status().items():
        t.add_row(name, "yes" if s.get("running") else "no", str(s.get("pid") or ""),
                  str(s.get("url") or ""), str(s.get("log") or ""))
    console.print(t)


def main() -> None:
    try:
        app()
    except TidelakeError as e:
        err.print(f"error: {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
