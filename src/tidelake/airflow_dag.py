"""``tidelake airflow-dag``: the schedules of a pipeline as an Airflow DAG file.

One DAG per schedule (``<pipeline>.<schedule>``, on the schedule's cron expression, no
catch-up, one run at a time: what ``tidelake run`` does with it). Its tasks run the tidelake
CLI: ``tidelake run PIPELINE --flow F`` for a batch flow (which resumes from its own
checkpoint, so a retried task neither loses nor repeats rows), ``tidelake lake compact``
for each table of a compaction job. The file needs only Airflow (2 or 3) where it is
loaded; the tasks need the ``tidelake`` command and the pipeline's environment variables.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from tidelake.config import Pipeline
from tidelake.errors import ConfigError

HEADER = '''"""Airflow DAGs of tidelake pipeline {name!r}: one per schedule of {path}.

Written by `tidelake airflow-dag`; write it again after changing the schedules.
"""

from datetime import datetime, timezone

try:
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
try:
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
'''

DAG = """
with DAG(
    dag_id={dag_id!r},
    description={description!r},
    schedule={cron!r},
    start_date=START,
    catchup=False,
    max_active_runs=1,
    tags=["tidelake", {name!r}],
):
"""

TASK = "    BashOperator(task_id={task_id!r}, bash_command={command!r})\n"


def render(pipeline: Pipeline, path: Path, tidelake: str) -> str:
    """The DAG file's text; ``tidelake`` is the command's path where the tasks run."""
    if not pipeline.schedules:
        raise ConfigError(
            f"{path}: no schedules: add `schedules:` (cron + flow or compact) for the DAG to run"
        )
    path = path.resolve()
    out = [HEADER.format(name=pipeline.name, path=path)]
    for name, job in pipeline.schedules.items():
        if len(job.cron.split()) != 5:
            raise ConfigError(
                f"{path}: schedules.{name}.cron: {job.cron!r} has a seconds field, which "
                "Airflow's cron has not (use 5 fields: minute hour day month weekday)"
            )
        what = f"run flow {job.flow}" if job.flow else f"compact {', '.join(job.compact)}"
        out.append(
            DAG.format(
                dag_id=f"{pipeline.name}.{name}",
                description=f"tidelake {pipeline.name}: {what}",
                cron=job.cron,
                name=pipeline.name,
            )
        )
        tasks = {job.flow: ["run", str(path), "--flow", job.flow]} if job.flow else {}
        tasks |= {f"compact_{t}": ["lake", "compact", str(path), t] for t in job.compact}
        for task_id, args in tasks.items():
            out.append(TASK.format(task_id=task_id, command=shlex.join([tidelake, *args])))
    return "".join(out)
