"""``schedules:``: a job due every minute runs exactly once per minute (a fake clock drives
the scheduler through ten minutes) and ``/api/flows`` shows its last and next run, a run
that overruns skips due times instead of catching up, compaction of a lake table no flow
created yet is nothing to do, and bad schedules fail at load."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from tidelake.config import Pipeline, loads
from tidelake.errors import ConfigError
from tidelake.runtime.schedules import Job, Scheduler
from tidelake.serve.api import create_app

START = datetime(2026, 1, 5, 12, 0, 30, tzinfo=UTC).timestamp()


def pipeline(tmp_path: Path, schedules: str) -> str:
    (tmp_path / "in.csv").write_text("id,v\n1,a\n2,b\n")
    return (
        "name: t\nbroker: embedded\ndatabase: sqlite:///out.db\nflows:\n"
        "  summary:\n    source: {type: file, path: in.csv}\n"
        "    sink: {type: table, table: summary, mode: upsert, key: [id]}\n"
        "schedules:\n" + schedules
    )


class FakeClock:
    def __init__(self, stop: threading.Event, until: float) -> None:
        self.now, self.stop, self.until = START, stop, until

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.now += seconds
        if self.now >= self.until:
            self.stop.set()


def every_minute(
    tmp_path: Path, until: float
) -> tuple[Pipeline, threading.Event, FakeClock, list[float]]:
    p = loads(
        pipeline(tmp_path, "  eod: {cron: '* * * * *', flow: summary}\n"), tmp_path / "p.yaml"
    )
    stop = threading.Event()
    return p, stop, FakeClock(stop, until), []


def test_a_job_due_every_minute_runs_exactly_once_per_minute(tmp_path: Path) -> None:
    p, stop, clock, ran = every_minute(tmp_path, START + 600)
    jobs = Scheduler(p, stop, clock, clock.wait, on_run=lambda j: ran.append(j.last_run or 0))
    jobs.run()
    minutes = [datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S") for t in ran]
    assert minutes == [f"12:{m:02d}:00" for m in range(1, 11)]
    with sqlite3.connect(tmp_path / "out.db") as c:  # the batch flow really ran (once: upserts)
        assert c.execute("SELECT count(*) FROM summary").fetchone() == (2,)
    (status,) = orjson.loads((p.state_dir / "schedules.json").read_bytes())
    assert status["count"] == 10 and status["next_run"] == START + 630
    assert status["runs"] == "summary" and not status["last_error"]
    with TestClient(create_app(p)) as c:  # what /api/flows shows of it
        (flow,) = [f for f in c.get("/api/flows").json() if f["flow"] == "summary"]
    assert (flow["cron"], flow["next_run"]) == ("* * * * *", START + 630)
    assert flow["last_run"] == START + 570 and flow["state"] == "finished"


def test_compacting_a_table_not_created_yet_is_not_a_failure(tmp_path: Path) -> None:
    schedules = "  tidy: {cron: '* * * * *', compact: [candles]}\n"
    p = loads(
        pipeline(tmp_path, schedules) + f"lake: file://{tmp_path}/lake\n", tmp_path / "p.yaml"
    )
    stop = threading.Event()
    clock = FakeClock(stop, START + 60)
    ran: list[Job] = []
    Scheduler(p, stop, clock, clock.wait, on_run=ran.append).run()
    assert [(j.runs, j.last_error) for j in ran] == [(1, "")]


def test_a_summary_due_before_its_table_landed_reads_nothing_but_a_typo_fails(
    tmp_path: Path,
) -> None:
    """The markets demo's end-of-day summary ran before its first candle landed: the job's
    error (table candles does not exist) was shown on the dashboard until its next run."""
    text = (
        f"name: t\nbroker: embedded\nlake: file://{tmp_path}/lake\nflows:\n"
        "  candles:\n    source: {type: generator, kind: movie_ratings, limit: 5}\n"
        "    sink: {type: lake, table: candles}\n"
        "  eod:\n    source: {type: query, sql: 'SELECT count(*) AS n FROM lake.candles'}\n"
        "    sink: {type: lake, table: eod}\n"
        "  typo:\n    source: {type: query, sql: 'SELECT count(*) AS n FROM lake.candels'}\n"
        "    sink: {type: lake, table: typo}\n"
        "schedules:\n  eod: {cron: '* * * * *', flow: eod}\n"
        "  typo: {cron: '* * * * *', flow: typo}\n"
    )
    p = loads(text, tmp_path / "p.yaml")
    stop = threading.Event()
    clock = FakeClock(stop, START + 60)
    ran: list[Job] = []
    Scheduler(p, stop, clock, clock.wait, on_run=ran.append).run()
    errors = {j.name: j.last_error for j in ran}
    assert errors["eod"] == ""
    assert "candels does not exist" in errors["typo"]


def test_a_run_that_overruns_skips_the_due_times_it_missed(tmp_path: Path) -> None:
    p, stop, clock, ran = every_minute(tmp_path, START + 400)

    class Slow(Scheduler):
        def _run(self, job: Job) -> None:  # each run takes 150 s of the fake clock
            super()._run(job)
            ran.append(job.last_run or 0)
            clock.now += 150

    Slow(p, stop, clock, clock.wait).run()
    assert [t - START for t in ran] == [30, 210, 390]  # 12:01, then 12:04, 12:07


@pytest.mark.parametrize(
    ("schedules", "message"),
    [
        ("  x: {cron: 'every day', flow: summary}\n", "schedules.x.cron: Value error, 'every day'"),
        ("  x: {cron: '0 * * * *', flow: nope}\n", "schedules.x: no flow 'nope'"),
        ("  x: {cron: '0 * * * *'}\n", "give a `flow` to run or lake tables to `compact`"),
    ],
)
def test_bad_schedules_fail_at_load(tmp_path: Path, schedules: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"p.yaml:\d+") as e:
        loads(pipeline(tmp_path, schedules), tmp_path / "p.yaml")
    assert message in str(e.value)


def test_a_cron_from_the_environment_and_a_query_source_that_only_selects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EOD_CRON", raising=False)  # `*/5` is no YAML scalar: it stays a string
    p = loads(pipeline(tmp_path, "  x: {cron: '${EOD_CRON:-*/5 * * * *}', flow: summary}\n"),
              tmp_path / "p.yaml")  # fmt: skip
    assert p.schedules["x"].cron == "*/5 * * * *"
    query = "name: t\nflows:\n  q:\n    source: {type: query, sql: 'DELETE FROM lake.x'}\n"
    query += "    sink: {type: console}\n"
    with pytest.raises(ConfigError, match=r"p.yaml:4: .*only a single read-only SELECT"):
        loads(query, tmp_path / "p.yaml")
