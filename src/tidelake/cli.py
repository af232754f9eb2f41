"""The ``tidelake`` command line."""

from __future__ import annotations

import enum
import inspect
import re
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from tidelake import __version__
from tidelake.errors import TidelakeError
from tidelake.extras import missing_extra
from tidelake.projects import scenario_names
from tidelake.query_output import print_table

if TYPE_CHECKING:
    from tidelake.config import Pipeline

# soft_wrap: a long line is one line in a pipe or log file, never cut or re-wrapped at 80
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _fail(e: TidelakeError) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
    raise typer.Exit(2)


class _Commands(typer.core.TyperGroup):
    """The one error handler of every command: a TidelakeError or a missing optional
    dependency ends the command with its message (which says what to do) and exit code 2."""

    def invoke(self, ctx: Any) -> Any:  # a click Context (typer vendors its own click)
        try:
            return super().invoke(ctx)
        except TidelakeError as e:
            _fail(e)
        except ImportError as e:
            problem = missing_extra(e, f"tidelake {ctx.invoked_subcommand or ''}".strip())
            if problem is None:
                raise
            _fail(problem)


app = typer.Typer(
    cls=_Commands,
    help="Real-time data pipelines: ingest, log, transform, land exactly once, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cdc_app = typer.Typer(help="Change data capture housekeeping.", no_args_is_help=True)
lake_app = typer.Typer(
    help="Inspect and maintain the pipeline's Iceberg tables.", no_args_is_help=True
)
topics_app = typer.Typer(help="Inspect and manage the pipeline's log.", no_args_is_help=True)
infra_app = typer.Typer(
    help="Start and stop local services (Kafka, PostgreSQL, ...).", no_args_is_help=True
)
app.add_typer(topics_app, name="topics")
app.add_typer(infra_app, name="infra")
app.add_typer(lake_app, name="lake")
app.add_typer(cdc_app, name="cdc")
dlq_app = typer.Typer(
    help="Work with a flow's dead letters: count, inspect, redrive.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")
users_app = typer.Typer(
    help="Manage the pipeline's user accounts (API logins).", no_args_is_help=True
)
app.add_typer(users_app, name="users")
forms_app = typer.Typer(help="The operator forms' audit trail.", no_args_is_help=True)
app.add_typer(forms_app, name="forms")


class Engine(enum.StrEnum):
    tidelake = "tidelake"
    spark = "spark"


PipelineArg = Annotated[Path, typer.Argument(help="pipeline file (YAML)", show_default=False)]
FlowArg = Annotated[str, typer.Argument(help="flow name", show_default=False)]


def _load(path: Path):  # noqa: ANN202 - returns tidelake.config.Pipeline
    from tidelake.config import load

    return load(path)


@app.command()
def version() -> None:
    """Print the tidelake version.  Example: tidelake version"""
    console.print(__version__)


@app.command()
def validate(pipeline: PipelineArg) -> None:
    """Check a pipeline file and report every problem as file:line: key: problem (hint).

    Example: tidelake validate scenarios/movies/pipeline.yaml
    """
    from tidelake.checks import check

    p = _load(pipeline)
    findings = check(p, pipeline)
    for line in findings:
        (console if ": note: " in line else err).print(line, markup=False, highlight=False)
    if any(": note: " not in line for line in findings):
        raise typer.Exit(2)
    console.print(f"[green]ok[/green] {pipeline}: pipeline {p.name!r}, flows: {', '.join(p.flows)}")


@app.command()
def run(
    pipeline: PipelineArg,
    flow: Annotated[
        list[str] | None, typer.Option("--flow", "-f", help="run only this flow (repeatable)")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", "-w", min=1, help="worker processes per flow (default: its workers:)"
        ),
    ] = None,
    worker: Annotated[str, typer.Option("--worker", hidden=True)] = "",
    engine: Annotated[
        Engine | None,
        typer.Option(help="run the chosen flows on this engine, whatever their engine: key says"),
    ] = None,
) -> None:
    """Run the flows of a pipeline until their sources end or Ctrl-C (the batch in flight finishes).

    With several workers (--workers N or workers: in the file) each flow runs as N supervised
    processes in one consumer group; the same command on another machine joins the group.
    Off a terminal (a pipe, CI, a log file) it prints a progress line per flow every 5 s.
    --engine spark runs them as Spark Structured Streaming queries
    (pip install 'tidelake\\[spark]').

    Example: tidelake run scenarios/stock/pipeline.yaml --flow opening_stock
    """
    from tidelake.runtime import schedules
    from tidelake.runtime.console import show_live
    from tidelake.runtime.runner import Runner, failed, run_flows
    from tidelake.runtime.signals import stop_on_signals

    p = _load(pipeline)
    names = flow or [f for f in p.flows if f not in p.scheduled()]
    if engine is not None:
        for name in (n for n in names if n in p.flows):
            p.flows[name].engine = engine.value
    stop = threading.Event()
    done = threading.Event()
    stop_on_signals(stop)
    counts = {n: workers or p.flows[n].workers for n in names if n in p.flows}
    supervised = not worker and any(n > 1 for n in counts.values())
    if supervised:
        _refuse_unsplittable(p, counts)
    view: list[threading.Thread] = []
    if not flow and p.schedules:
        view.append(schedules.start(p, stop, lambda line: err.print(line, markup=False)))
    if supervised:
        status = _supervise(pipeline, p, counts, stop, done)
        while view and not stop.wait(1):
            pass  # the workers ended; the schedules run on until Ctrl-C
        raise typer.Exit(status)

    def started(runners: list[Runner]) -> None:
        t = threading.Thread(
            target=show_live, args=([r.metrics for r in runners], done, err), daemon=True
        )
        t.start()
        view.append(t)

    t0 = time.monotonic()
    try:
        runners = run_flows(p, names, stop, on_start=started, worker=worker)
        while view and view[0].name == "schedules" and not stop.wait(1):
            pass  # the flows ended; the schedules run on until Ctrl-C
    finally:
        done.set()
        for t in view:
            t.join(2)
    counts_out = ", ".join(f"{r.name} {r.metrics.records_out:,}" for r in runners)
    err.print(
        f"done in {time.monotonic() - t0:.1f}s, rows out per flow: {counts_out}", markup=False
    )
    for r in failed(runners):
        err.print(f"error: flow {r.name} failed: {r.metrics.last_error}", markup=False)
    if failed(runners):
        raise typer.Exit(1)


def _refuse_unsplittable(p: Pipeline, counts: dict[str, int]) -> None:
    """Exit 2, with each reason and fix, when a flow cannot run as its count of workers."""
    from tidelake.runtime import workers

    wrong = [(f, why) for f, n in counts.items() for why in workers.problems(p, f, n)]
    for f, why in wrong:
        err.print(f"error: flow {f} with {counts[f]} workers: {why}", markup=False)
    if wrong:
        raise typer.Exit(2)


def _supervise(
    path: Path, p: Pipeline, counts: dict[str, int], stop: threading.Event, done: threading.Event
) -> int:
    """``run`` with several workers: supervise them until ``stop``; their exit status."""
    from tidelake.runtime import workers
    from tidelake.runtime.console import show_live
    from tidelake.runtime.metrics import FlowMetrics, read_all

    tag = workers.tag()

    def current() -> list[FlowMetrics]:
        raw = read_all(p.state_dir / "metrics")
        return [
            FlowMetrics.load(m)
            for m in raw
            if m.get("flow") in counts and str(m.get("worker", "")).startswith(tag)
        ]

    view = threading.Thread(target=show_live, args=(current, done, err), daemon=True)
    view.start()
    try:
        return workers.supervise(path, counts, stop)
    finally:
        done.set()
        view.join(2)


@topics_app.command("list")
def topics_list(pipeline: PipelineArg) -> None:
    """List topics with partitions and end offsets.  Example: tidelake topics list pipeline.yaml"""
    from rich.table import Table

    from tidelake.broker import connect

    p = _load(pipeline)
    broker = connect(p.url(p.broker))
    t = Table("topic", "partitions", "records (end offsets)")
    for name, n in broker.topics().items():
        ends = broker.end_offsets(name)
        t.add_row(name, str(n), f"{sum(ends.values()):,}")
    print_table(console, t)
    broker.close()


@topics_app.command("create")
def topics_create(
    pipeline: PipelineArg,
    topic: Annotated[str, typer.Argument(help="topic name")],
    partitions: Annotated[int, typer.Option(help="partition count")] = 1,
) -> None:
    """Create a topic (no-op if it exists).

    Example: tidelake topics create p.yaml ratings --partitions 4
    """
    from tidelake.broker import connect

    p = _load(pipeline)
    broker = connect(p.url(p.broker))
    broker.create_topic(topic, partitions)
    console.print(f"topic {topic} ready ({broker.topics().get(topic)} partitions)")
    broker.close()


@topics_app.command("tail")
def topics_tail(
    pipeline: PipelineArg,
    topic: Annotated[str, typer.Argument(help="topic name")],
    count: Annotated[
        int, typer.Option("-n", help="stop after this many records (0 = follow)")
    ] = 10,
) -> None:
    """Print records of a topic from the beginning, without committing offsets: one JSON
    object per line, {"topic", "partition", "offset", "value"} (value as JSON when it is).

    Example: tidelake topics tail scenarios/stock/pipeline.yaml operations -n 5 | jq -c .value
    """
    import uuid

    from tidelake.broker import connect
    from tidelake.query_output import record_lines

    p = _load(pipeline)
    broker = connect(p.url(p.broker))
    if topic not in broker.topics():
        broker.close()
        raise TidelakeError(f"no topic {topic!r} in the log (tidelake topics list {pipeline})")
    consumer = broker.consumer(f"tidelake-tail-{uuid.uuid4().hex[:8]}", [topic])
    seen = 0
    try:
        while count == 0 or seen < count:
            batch = consumer.poll(count - seen if count else 500, 1.0)
            sys.stdout.buffer.write(record_lines(topic, batch))
            sys.stdout.flush()
            seen += len(batch)
            if not len(batch) and count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        broker.close()


@dlq_app.command("list")
def dlq_list(pipeline: PipelineArg, flow: FlowArg) -> None:
    """Count a flow's dead letters by reason.  Example: tidelake dlq list p.yaml orders_land"""
    from collections import Counter

    from rich.table import Table

    from tidelake.runtime import dead_letters

    p, broker, topic = _dead_letter_topic(pipeline, flow)
    counts = Counter(letter.reason for letter in dead_letters.read(broker, topic))
    broker.close()
    t = Table("dead letters", "reason", title=f"{topic}: {sum(counts.values()):,} dead letters")
    for reason, n in counts.most_common():
        t.add_row(f"{n:,}", reason)
    print_table(console, t)


@dlq_app.command("show")
def dlq_show(
    pipeline: PipelineArg,
    flow: FlowArg,
    fmt: Annotated[
        str, typer.Option("--format", help="table, or json: one whole letter per line")
    ] = "table",
    limit: Annotated[int, typer.Option("-n", help="at most this many (0 = all)")] = 0,
) -> None:
    """Print a flow's dead letters: reason, origin and payload.

    `--format json` prints each letter as one JSON object per line, never truncated, with its
    place in the dead-letter topic (`dlq_partition`, `dlq_offset`).

    Example: tidelake dlq show p.yaml orders_land --format json
    """
    import orjson
    from rich.table import Table

    from tidelake.runtime import dead_letters

    if fmt not in ("table", "json"):
        raise TidelakeError(f"--format {fmt!r}: use table or json")
    p, broker, topic = _dead_letter_topic(pipeline, flow)
    t = Table("#", "reason", "origin", "payload", title=topic)
    for i, letter in enumerate(dead_letters.read(broker, topic)):
        if limit and i >= limit:
            break
        at = {"dlq_partition": letter.partition, "dlq_offset": letter.offset}
        if fmt == "json":
            sys.stdout.buffer.write(orjson.dumps(at | letter.value) + b"\n")
            continue
        origin = letter.value.get("origin")
        t.add_row(
            f"{letter.partition}/{letter.offset}",
            letter.reason,
            _origin_text(origin),
            orjson.dumps(letter.value.get("payload")).decode(),
        )
    broker.close()
    if fmt == "table":
        for c in t.columns:
            c.overflow = "fold"
        print_table(console, t)


def _origin_text(origin: object) -> str:
    if isinstance(origin, dict) and "topic" in origin:
        return f"{origin['topic']}/{origin.get('partition')}@{origin.get('offset')}"
    return "" if origin is None else str(origin)


@dlq_app.command("redrive")
def dlq_redrive(
    pipeline: PipelineArg,
    flow: FlowArg,
    sql: Annotated[
        str | None,
        typer.Option("--sql", help="fix the letters first: SELECT ... FROM batch (their payloads)"),
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="topic to write to (default: the flow's input)")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="letters per log transaction")] = 10_000,
) -> None:
    """Re-inject a flow's dead letters into its input topic, exactly once (optionally fixed
    by SQL first): a second redrive lands nothing; one killed midway lands the rest when run
    again. Letters the SQL leaves out are not offered again.

    Example: tidelake dlq redrive p.yaml orders_land --sql "SELECT * REPLACE
    (CAST(replace(quantity, 'two', '2') AS INT) AS quantity) FROM batch"
    """
    from tidelake.runtime.redrive import input_topic, redrive
    from tidelake.runtime.signals import stop_on_signals

    p, broker, topic = _dead_letter_topic(pipeline, flow)
    broker.close()
    target = to or input_topic(p, flow)
    stop = threading.Event()
    stop_on_signals(stop)
    m = redrive(p, flow, sql=sql, to=target, batch_size=batch_size, stop=stop)
    left_out = max(0, m.records_in - m.records_out - m.dead_letters)
    err.print(
        f"redriven: {m.records_out:,} dead letters of {topic} into {target}"
        + (f" ({left_out:,} left out by the SQL)" if left_out else "")
        + (
            f"; {m.dead_letters:,} failed again (see {p.name}.{flow}.redrive.dlq)"
            if m.dead_letters
            else ""
        )
    )


def _dead_letter_topic(pipeline: Path, flow: str):  # noqa: ANN202
    """(pipeline, broker, dead-letter topic) of ``flow``."""
    from tidelake.broker import connect
    from tidelake.runtime.dead_letters import dead_letter_topic

    p = _load(pipeline)
    topic = dead_letter_topic(p, flow)
    return p, connect(p.url(p.broker)), topic


@infra_app.command("up")
def infra_up(
    services: Annotated[
        list[str] | None,
        typer.Argument(help="kafka, postgres, connect, s3, cassandra, mongodb, mariadb"),
    ] = None,
    with_: Annotated[
        list[str] | None, typer.Option("--with", help="add a service (e.g. connect)")
    ] = None,
) -> None:
    """Start local services natively on loopback (default: kafka and postgres).

    Example: tidelake infra up --with connect
    """
    from tidelake import infra

    wanted = list(services or ["kafka", "postgres"]) + list(with_ or [])
    urls = infra.up(wanted)
    for name, url in urls.items():
        console.print(f"[green]up[/green] {name:9} {url}")


@infra_app.command("down")
def infra_down(
    services: Annotated[
        list[str] | None, typer.Argument(help="services to stop (default: all)")
    ] = None,
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

    infra.ensure_cached(services or list(infra.SERVICES))


@infra_app.command("status")
def infra_status() -> None:
    """Show which local services run, their URLs and logs.  Example: tidelake infra status"""
    from rich.table import Table

    from tidelake import infra

    t = Table("service", "running", "pid", "url", "log")
    for name, s in infra.status().items():
        t.add_row(
            name,
            "yes" if s.get("running") else "no",
            str(s.get("pid") or ""),
            str(s.get("url") or ""),
            str(s.get("log") or ""),
        )
    print_table(console, t)


@app.command()
def query(
    pipeline: PipelineArg,
    sql: Annotated[
        str,
        typer.Argument(
            help="one read-only SELECT over lake and database tables, or a saved query's name"
        ),
    ],
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or parquet")] = "table",
    as_of: Annotated[
        str | None, typer.Option(help="snapshot id or ISO timestamp (time travel)")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", help="write to this file (parquet needs it)")
    ] = None,
) -> None:
    """Run read-only SQL (DuckDB) over the pipeline's lake and database tables, or one of the
    pipeline file's saved `queries:` by name.

    `lake.T` and `db.T` name the lake's and the database's table T; a bare T must exist in
    only one of them.
    Example: tidelake query scenarios/stock/pipeline.yaml stock_levels --format csv
    """
    from tidelake.query_output import render

    if fmt not in ("table", "csv", "json", "parquet"):
        raise TidelakeError(f"--format {fmt!r}: use table, csv, json or parquet")
    from tidelake.lake import QueryEngine
    from tidelake.lake.catalog import table_names
    from tidelake.lake.query import check_select
    from tidelake.serve.sql_guard import Catalog, check

    p = _load(pipeline)
    sql = p.queries.get(sql.strip(), sql)
    check_select(sql)  # a syntax error names its token and line
    with QueryEngine(p) as engine:
        check(sql, Catalog(frozenset(table_names(p)), frozenset(engine.db.names())))
        snapshot: int | str | None = int(as_of) if as_of and as_of.isdigit() else as_of
        result = engine.sql(sql, as_of=snapshot)
    render(result, fmt, output, console)


@lake_app.command("tables")
def lake_tables(pipeline: PipelineArg) -> None:
    """List lake tables with rows, files, partitions and snapshots.

    Example: tidelake lake tables tidelake-demo/movies/pipeline.yaml
    """
    from rich.table import Table

    from tidelake import lake

    infos = lake.tables(_load(pipeline))
    t = Table("table", "rows", "files", "partitions", "snapshots", "last updated")
    for i in infos:
        t.add_row(
            i.name,
            f"{i.rows or 0:,}",
            str(i.files),
            str(i.partitions),
            str(i.snapshots),
            f"{i.last_updated:%Y-%m-%d %H:%M:%S}" if i.last_updated else "",
        )
    print_table(console, t)


@lake_app.command("describe")
def lake_describe(
    pipeline: PipelineArg, table: Annotated[str, typer.Argument(help="lake table")]
) -> None:
    """Show a lake table's schema, partitioning, files, snapshots and stored checkpoints.

    Example: tidelake lake describe tidelake-demo/movies/pipeline.yaml ratings
    """
    from rich.table import Table

    from tidelake import lake

    d = lake.describe(_load(pipeline), table)
    i = d.info
    console.print(f"[bold]{i.name}[/bold]  {d.location}")
    console.print(
        f"rows {i.rows or 0:,} · files {i.files} · partitions {i.partitions} "
        f"({i.partition_spec or 'unpartitioned'}) · snapshots {i.snapshots}"
    )
    cols = Table("column", "type", "nullable")
    for c in i.columns:
        cols.add_row(c.name, c.type, "yes" if c.nullable else "no")
    print_table(console, cols)
    hist = Table("snapshot", "committed", "operation", "added rows", "total rows", "flow")
    for s in d.history[:10]:
        hist.add_row(
            str(s.snapshot_id),
            f"{s.committed_at:%Y-%m-%d %H:%M:%S}",
            s.operation,
            f"{s.added_rows:,}",
            f"{s.total_rows:,}",
            s.flow or "",
        )
    print_table(console, hist)
    for flow, cp in d.checkpoints.items():
        console.print(f"checkpoint {flow}: {cp}")


@lake_app.command("compact")
def lake_compact(
    pipeline: PipelineArg, table: Annotated[str, typer.Argument(help="lake table")]
) -> None:
    """Rewrite small data files into large ones (rows and checkpoints unchanged).

    Example: tidelake lake compact tidelake-demo/movies/pipeline.yaml ratings
    """
    from tidelake import lake

    r = lake.compact(_load(pipeline), table)
    if r.files_removed == 0:
        console.print(f"{table}: nothing to compact (no partition has enough small files)")
    else:
        console.print(
            f"{table}: {r.files_removed:,} files rewritten into {r.files_added:,} "
            f"in {r.partitions:,} partition(s), {r.rows:,} rows, snapshot {r.snapshot_id}"
        )


@lake_app.command("expire")
def lake_expire(
    pipeline: PipelineArg,
    table: Annotated[str, typer.Argument(help="lake table")],
    keep: Annotated[int, typer.Option(help="snapshots to keep at least")] = 100,
) -> None:
    """Expire old snapshots and delete files no snapshot references.

    Example: tidelake lake expire tidelake-demo/movies/pipeline.yaml ratings --keep 10
    """
    from tidelake import lake

    r = lake.expire(_load(pipeline), table, keep=keep)
    console.print(
        f"{table}: {r.snapshots_expired:,} snapshot(s) expired, {r.files_deleted:,} files deleted"
    )


@cdc_app.command("drop-slot")
def cdc_drop_slot(
    pipeline: PipelineArg,
    flow: Annotated[str, typer.Option("--flow", "-f", help="the cdc flow stopped for good")],
) -> None:
    """Retire a CDC flow: drop its replication slot and publication so PostgreSQL frees its WAL.

    A slot nobody reads keeps every WAL segment since its position. For engine 'debezium' the
    connector is stopped, its offsets reset and it is deleted first (it holds the slot).
    Example: tidelake cdc drop-slot scenarios/movies/pipeline.yaml --flow capture
    """
    from tidelake.sources.cdc.retire import retire

    retire(_load(pipeline), flow, console.print)


@app.command()
def serve(
    pipeline: PipelineArg,
    host: Annotated[
        str, typer.Option(help="bind address; beyond loopback needs TIDELAKE_API_TOKEN or a user")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    pg_port: Annotated[
        int | None,
        typer.Option(help="also serve the PostgreSQL wire protocol here (psql, JDBC, ODBC)"),
    ] = None,
    pg_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate: pg-wire clients may use TLS")
    ] = None,
    pg_key: Annotated[Path | None, typer.Option(help="PEM private key of --pg-cert")] = None,
) -> None:
    """Serve the SQL, table, ingest and flow API (OpenAPI docs at /docs) and /metrics.

    Example: TIDELAKE_API_TOKEN=$(openssl rand -hex 24) tidelake serve pipeline.yaml --host 0.0.0.0
    """
    from tidelake.serve.pgwire import TLS
    from tidelake.serve.server import serve as run_server

    if (pg_cert is None) != (pg_key is None):
        raise typer.BadParameter("--pg-cert and --pg-key go together")
    tls = TLS(str(pg_cert), str(pg_key)) if pg_cert and pg_key else None
    run_server(_load(pipeline), host=host, port=port, pg_port=pg_port, pg_tls=tls)


UserArg = Annotated[str, typer.Argument(help="user name", show_default=False)]


@users_app.command("add")
def users_add(
    pipeline: PipelineArg,
    name: UserArg,
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "viewer",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from stdin")
    ] = False,
) -> None:
    """Add (or replace) a user; the password is asked for, or read with --password-stdin.

    Example: openssl rand -base64 18 | tidelake users add pipeline.yaml alice --role operator
    --password-stdin
    """
    from tidelake.serve.users import Users

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    Users(_load(pipeline)).add(name, role, password)
    console.print(f"user {name} ({role}) saved")


@users_app.command("list")
def users_list(pipeline: PipelineArg) -> None:
    """List the users and their roles.  Example: tidelake users list pipeline.yaml"""
    from rich.table import Table

    from tidelake.serve.users import Users

    t = Table("name", "role", "created", title="users")
    for user in Users(_load(pipeline)).list():
        t.add_row(user.name, user.role, user.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"))
    print_table(console, t)


@users_app.command("remove")
def users_remove(pipeline: PipelineArg, name: UserArg) -> None:
    """Remove a user.  Example: tidelake users remove pipeline.yaml alice"""
    from tidelake.serve.users import Users

    if not Users(_load(pipeline)).remove(name):
        raise TidelakeError(f"no user {name!r} (see tidelake users list)")
    console.print(f"user {name} removed")


@forms_app.command("entries")
def forms_entries(
    pipeline: PipelineArg,
    form: Annotated[str | None, typer.Argument(help="only this form", show_default=False)] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="table, or json: one entry per line")
    ] = "table",
) -> None:
    """Who entered what and when, newest first, with each entry's status (sent, refused with
    the reason, failed: the log did not take it).

    Example: tidelake forms entries scenarios/stock/pipeline.yaml sale
    """
    import json

    from rich.table import Table

    from tidelake.config import STAMPS
    from tidelake.serve.users import Entries

    if fmt not in ("table", "json"):
        _fail(TidelakeError(f"--format {fmt!r}: use table or json"))
    p = _load(pipeline)
    if form is not None and form not in p.forms:
        _fail(TidelakeError(f"no form {form!r} (forms: {', '.join(p.forms) or 'none'})"))
    entries = Entries(p).list(form)
    if fmt == "json":
        for e in entries:
            row = {"entry_id": e.entry_id, "form": e.form, "user": e.user,
                   "entered_at": e.entered_at.isoformat(), "status": e.status,
                   "reason": e.reason, "values": e.payload}  # fmt: skip
            print(json.dumps(row, default=str))
        return
    t = Table("entered at", "form", "user", "status", "values", "entry", title="form entries")
    for e in entries:
        values = {k: v for k, v in e.payload.items() if k not in STAMPS}
        status = e.status if e.reason is None else f"{e.status}: {e.reason}"
        t.add_row(
            e.entered_at.strftime("%Y-%m-%d %H:%M:%S UTC"), e.form, e.user, status,
            json.dumps(values, default=str), e.entry_id,
        )  # fmt: skip
    print_table(console, t)


@app.command()
def dashboard(
    pipeline: PipelineArg,
    port: Annotated[int, typer.Option(help="TCP port")] = 8501,
    refresh: Annotated[float, typer.Option(help="seconds between live refreshes")] = 2.0,
) -> None:
    """Open the live dashboard: flow health and the pipeline's `dashboard:` panels.

    It binds to loopback only (its panels need no login; its forms do); put an authenticating
    proxy in front to share it.
    Example: tidelake dashboard scenarios/movies/pipeline.yaml
    """
    from tidelake.serve.dashboard.launch import serve as run_dashboard

    raise typer.Exit(run_dashboard(pipeline, port, "127.0.0.1", refresh))


@app.command()
def demo(
    scenario: Annotated[
        str,
        typer.Argument(help=f"a scenario shipped with tidelake: {', '.join(scenario_names())}"),
    ] = "movies",
    api_port: Annotated[int, typer.Option(help="REST API port")] = 8000,
    dashboard_port: Annotated[int, typer.Option(help="dashboard port")] = 8501,
    ratings_port: Annotated[
        int, typer.Option(help="movies: the ratings API's port; reviews: the app's and site's")
    ] = 8800,
    market_port: Annotated[int, typer.Option(help="markets: the demo market API's port")] = 8801,
    no_dashboard: Annotated[
        bool, typer.Option("--no-dashboard", help="skip the dashboard")
    ] = False,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="where the scenario runs and keeps its state", show_default=False
        ),
    ] = None,
) -> None:
    """Run a scenario end to end on embedded defaults: flows, REST API and live dashboard.

    The scenario is copied to --dir (default ./tidelake-demo/SCENARIO), where its state stays
    between runs. Environment variables in its pipeline file switch it to Kafka, PostgreSQL,
    Debezium and S3. Example: tidelake demo movies
    """
    from tidelake.demo import run_demo

    run_demo(
        scenario,
        api_port=api_port,
        dashboard_port=dashboard_port,
        ratings_port=ratings_port,
        market_port=market_port,
        dashboard=not no_dashboard,
        console=err,
        directory=directory,
    )


@app.command("airflow-dag")
def airflow_dag(
    pipeline: PipelineArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="DAG file to write (default: print it)"),
    ] = None,
    tidelake: Annotated[
        str | None,
        typer.Option(help="the tidelake command where Airflow runs the tasks", show_default=False),
    ] = None,
) -> None:
    """Write the pipeline's schedules as an Airflow DAG file: one DAG per schedule, whose
    tasks run its batch flow (tidelake run --flow) or compact its lake tables.

    Example: tidelake airflow-dag scenarios/markets/pipeline.yaml -o dags/markets.py
    """
    from tidelake.airflow_dag import render

    p = _load(pipeline)
    text = render(p, pipeline, tidelake or str(Path(sys.executable).with_name("tidelake")))
    if output is None:
        print(text, end="")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    dags = ", ".join(f"{p.name}.{name}" for name in p.schedules)
    console.print(f"wrote {output}: DAGs {dags}", highlight=False)


@app.command()
def schema(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="the README's connector tables instead")
    ] = False,
) -> None:
    """Print the JSON Schema of pipeline files (for editors), generated from the models.

    Example: tidelake schema > tidelake.schema.json
    """
    import json

    from tidelake import reference

    if markdown:
        print(reference.markdown(), end="")
        return
    skipped = [n for kind in reference.KINDS for n in reference.connectors(kind)[1]]
    if skipped:
        err.print(f"not in the schema (their extras are not installed): {', '.join(skipped)}")
    print(json.dumps(reference.json_schema(), indent=2))


@app.command()
def init(
    name: Annotated[
        str,
        typer.Argument(help=f"a scenario ({', '.join(scenario_names())}) or 'minimal'"),
    ],
    directory: Annotated[
        Path | None, typer.Argument(help="new project folder (default: ./NAME)", show_default=False)
    ] = None,
) -> None:
    """Start a project: copy a scenario or the minimal template into a new folder.

    Example: tidelake init minimal shop && tidelake run shop/pipeline.yaml
    """
    from tidelake.projects import init_project

    pipeline = init_project(name, directory)
    console.print(f"[green]created[/green] {pipeline.parent}")
    console.print(f"  tidelake validate {pipeline}\n  tidelake run {pipeline}", highlight=False)


def _reflow(group: typer.Typer) -> None:
    """Join the lines of each help paragraph so the terminal's width wraps them (typer keeps a
    docstring's line breaks: ragged lines at 80 columns); an ``Example:`` starts its own line."""
    for command in group.registered_commands:
        text = command.help or inspect.getdoc(command.callback) or ""
        command.help = re.sub(r"(?<!\n)\n(?!\n|Example:)", " ", text)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _reflow(sub.typer_instance)


_reflow(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
