"""``tidelake airflow-dag``: the DAG file loads in a real Airflow, whose tasks run the batch flows.

Airflow runs in its own virtualenv, pinned by ``airflow-requirements.txt`` and cached under
``~/.cache/tidelake/venvs`` (built on the first run only; the test is skipped, with the
reason, only if it cannot be installed). A pipeline with three schedules becomes three DAGs;
``airflow dags test`` runs each: the load flow lands the orders (and, run again, lands
nothing twice), the summary flow's query writes the totals into the lake, and compaction runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tidelake.config import load
from tidelake.infra._process import cache_root
from tidelake.infra._venv import ensure_venv
from tidelake.lake import QueryEngine

pytestmark = pytest.mark.integration

PIPELINE = """\
name: shop
database: sqlite:///shop.db
flows:
  orders:
    source: {type: file, path: orders.csv}
    sink: {type: table, table: orders}
  totals:
    source:
      type: query
      sql: SELECT customer, sum(amount) AS total, count(*) AS n FROM db.orders GROUP BY ALL
    sink: {type: lake, table: totals, mode: upsert, key: [customer]}
schedules:
  load: {cron: "*/5 * * * *", flow: orders}
  nightly: {cron: "0 2 * * *", flow: totals}
  compaction: {cron: "0 3 * * 0", compact: [totals]}
"""


@pytest.fixture(scope="module")
def airflow() -> Path:
    requirements = Path(__file__).with_name("airflow-requirements.txt")
    try:
        venv = ensure_venv(requirements, cache_root() / "venvs" / "airflow")
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"Airflow could not be installed into its virtualenv: {e}")
    return venv / "bin" / "airflow"


def test_the_dag_file_runs_the_batch_flows_in_airflow(airflow: Path, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PIPELINE)
    (tmp_path / "orders.csv").write_text("id,customer,amount\n1,ann,10.5\n2,bob,3\n3,ann,4.5\n")
    tidelake = Path(sys.executable).with_name("tidelake")
    dags = tmp_path / "dags" / "shop.py"
    wrote = subprocess.run(
        [tidelake, "airflow-dag", tmp_path / "p.yaml", "-o", dags],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "DAGs shop.load, shop.nightly, shop.compaction" in wrote.stdout
    env = os.environ | {
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags.parent),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }

    def airflow_run(*args: str) -> str:
        t0 = time.monotonic()
        proc = subprocess.run(
            [airflow, *args], env=env, capture_output=True, text=True, timeout=300
        )
        out = proc.stdout + proc.stderr
        print(f"airflow {' '.join(args)}: {time.monotonic() - t0:.1f}s")
        assert proc.returncode == 0, out[-5000:]
        return out

    airflow_run("db", "migrate")

    def dag_test(dag: str) -> str:
        out = airflow_run("dags", "test", dag)
        assert f"dag_id={dag}" in out and "state=success" in out, out[-5000:]
        return out

    for dag in ("shop.load", "shop.load", "shop.nightly", "shop.compaction"):
        out = dag_test(dag)
    assert "totals:" in out, "the compaction task ran `tidelake lake compact`"
    with QueryEngine(load(tmp_path / "p.yaml")) as engine:
        orders = engine.sql("SELECT count(*) AS n FROM db.orders").to_pylist()
        totals = engine.sql("SELECT * FROM lake.totals ORDER BY customer").to_pylist()
    assert orders == [{"n": 3}], "the second load run landed nothing twice"
    assert totals == [
        {"customer": "ann", "total": 15.0, "n": 2},
        {"customer": "bob", "total": 3.0, "n": 1},
    ]
