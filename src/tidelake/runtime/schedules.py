"""``schedules:``: batch flows and lake maintenance on cron schedules, beside the running flows.

Each job runs once per due time of its cron expression (UTC). The next due time follows the
previous *due* time, not the end of the run, so a job due every minute runs once a minute
however long it takes; due times a run overran are skipped, never run late in a burst. A
scheduled flow runs to the end of its source (it should be finite: a file, a query-like
source) with its own checkpoint, like ``tidelake run --flow``. Jobs run one at a time, in the
scheduler's thread; a failed run is logged and shown, and the job runs again when next due.
Their last and next runs are kept in ``.tidelake/schedules.json`` (``/api/flows`` shows them).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from croniter import croniter

from tidelake.config import Pipeline, Schedule
from tidelake.errors import TidelakeError

log = logging.getLogger(__name__)


@dataclass
class Job:
    """A schedule and when it ran and runs next (epoch seconds)."""

    name: str
    schedule: Schedule
    next_run: float
    last_run: float | None = None
    last_error: str = ""
    runs: int = 0


class Scheduler:
    """Runs ``pipeline``'s schedules until ``stop`` is set. ``clock`` and ``wait`` are the
    wall clock and ``stop.wait`` (a test passes a fake clock)."""

    def __init__(
        self,
        pipeline: Pipeline,
        stop: threading.Event,
        clock: Callable[[], float] = time.time,
        wait: Callable[[float], object] | None = None,
        on_run: Callable[[Job], None] = lambda job: None,
    ) -> None:
        self.pipeline, self.stop, self.clock, self.on_run = pipeline, stop, clock, on_run
        self.wait = wait or stop.wait
        now = clock()
        self.jobs = [
            Job(name, s, croniter(s.cron, now).get_next(float))
            for name, s in pipeline.schedules.items()
        ]
        self._save()

    def run(self) -> None:
        while self.jobs and not self.stop.is_set():
            job = min(self.jobs, key=lambda j: j.next_run)
            if (ahead := job.next_run - self.clock()) > 0:
                self.wait(ahead)
                continue
            self._run(job)
            due = croniter(job.schedule.cron, job.next_run)
            job.next_run = due.get_next(float)
            while job.next_run <= self.clock():  # overran: skip, do not catch up
                job.next_run = due.get_next(float)
            self._save()
            self.on_run(job)

    def _run(self, job: Job) -> None:
        job.last_run, job.runs = self.clock(), job.runs + 1
        try:
            if job.schedule.flow:
                from tidelake.runtime.runner import FlowRunner

                FlowRunner(self.pipeline, job.schedule.flow, self.stop).run()
            if job.schedule.compact:
                from tidelake import lake
                from tidelake.lake.catalog import table_names

                existing = set(table_names(self.pipeline))
                for table in job.schedule.compact:
                    if table in existing:  # a table no flow created yet has nothing to compact
                        lake.compact(self.pipeline, table)
            job.last_error = ""
        except Exception as e:  # noqa: BLE001 - shown with the job; it runs again when due
            job.last_error = f"{type(e).__name__}: {e}"
            log.warning(
                "schedule %s failed: %s", job.name, e, exc_info=not isinstance(e, TidelakeError)
            )

    def _save(self) -> None:
        path = self.pipeline.state_dir / "schedules.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.status()))
        os.replace(tmp, path)

    def status(self) -> list[dict[str, object]]:
        """Per job: what it runs, its cron, last and next run, runs so far, the last error."""
        return [
            {
                "schedule": j.name,
                "cron": j.schedule.cron,
                "runs": j.schedule.flow or f"compact {', '.join(j.schedule.compact)}",
                "last_run": j.last_run,
                "next_run": j.next_run,
                "count": j.runs,
                "last_error": j.last_error,
            }
            for j in self.jobs
        ]


def start(
    pipeline: Pipeline, stop: threading.Event, say: Callable[[str], None]
) -> threading.Thread:
    """Run ``pipeline``'s schedules in a thread until ``stop``, telling ``say`` each job's
    next run now and its last and next run after every run (the console's view of them)."""
    jobs = Scheduler(
        pipeline, stop, on_run=lambda job: say(f"schedule {job.name}: {describe(job)}")
    )
    for job in jobs.jobs:
        say(f"schedule {job.name}: {describe(job)}")
    thread = threading.Thread(target=jobs.run, name="schedules", daemon=True)
    thread.start()
    return thread


def describe(job: Job) -> str:
    """What a job runs, when it last ran (and how that went) and when it runs next (UTC)."""

    def hms(t: float) -> str:
        return time.strftime("%H:%M:%S", time.gmtime(t))

    what = job.schedule.flow or f"compact {', '.join(job.schedule.compact)}"
    last = "not yet run"
    if job.last_run is not None:
        failed = f", failed: {job.last_error}" if job.last_error else ""
        last = f"last run {hms(job.last_run)} (run {job.runs}{failed})"
    return f"{what} at {job.schedule.cron!r}; {last}; next {hms(job.next_run)} UTC"
