"""The tidelake dashboard (a Streamlit script): pipeline health, then the file's panels.

With ``forms:``, users log in in the sidebar and get the forms their role allows
(``operator.py``). Run it through ``tidelake dashboard PIPELINE`` (``launch.py``), or
directly with ``streamlit run app.py -- PIPELINE [--refresh SECONDS]``. Both live sections are
Streamlit fragments re-run every ``--refresh`` seconds, so the page updates in
place without a reload. Every query goes through the one query layer
(``QueryEngine``), one engine per browser session; it resolves each lake table's
current snapshot on every query, so new commits show up on the next refresh.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import re
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import streamlit as st

from tidelake import config
from tidelake.broker import Writer
from tidelake.config import Panel, Pipeline
from tidelake.lake.query import QueryEngine, referenced_tables
from tidelake.runtime import metrics
from tidelake.serve.dashboard import charts, operator
from tidelake.serve.forms import Desk

# (comments, not docstrings: Streamlit "magic" would print bare strings on the page)
MAX_ROWS = 10_000  # rows a panel draws at most; the rest is counted, not sent to the browser
STALE_AFTER = 10.0  # seconds without a metrics update before a running flow shows as silent
HISTORY = 150  # samples kept per flow for the sparklines (5 minutes at a 2 s refresh)
RATE_WINDOW = 10.0  # seconds of samples records/s is averaged over

_MARKDOWN = re.compile(r"[\\`*_{}\[\]()#+\-.!|~<>$:]")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tidelake dashboard")
    parser.add_argument("pipeline", nargs="?", default=os.environ.get("TIDELAKE_PIPELINE"))
    parser.add_argument("--refresh", type=float, default=2.0, help="seconds between updates")
    return parser.parse_args(argv)


@st.cache_resource(scope="session", show_spinner=False, on_release=lambda e: e.close())
def engine(path: str) -> QueryEngine:
    return QueryEngine(config.load(path))


@st.cache_resource(show_spinner=False, on_release=lambda w: w.close())
def writer(url: str) -> Writer:
    return Writer(url)


# -- pipeline health -----------------------------------------------------------------


@dataclass
class FlowHistory:
    """Successive metric snapshots of one flow, as seen by this browser session."""

    samples: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    rates: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def add(self, m: dict[str, Any]) -> None:
        """Record a published snapshot (``updated``, ``records_out``, ``lag``) once."""
        sample = (float(m.get("updated", 0.0)), int(m.get("records_out", 0)), int(m.get("lag", 0)))
        if self.samples and sample[0] <= self.samples[-1][0]:
            return
        if self.samples and sample[1] < self.samples[-1][1]:
            self.samples.clear()  # the flow restarted: its counters began again
        self.samples.append(sample)
        t1, n1, _ = sample
        window = [s for s in self.samples if s[0] >= t1 - RATE_WINDOW]
        t0, n0, _ = window[0]
        if t0 == t1:  # a single sample: average since the flow started
            t0, n0 = float(m.get("started", t1)), 0
        self.rates.append((n1 - n0) / max(t1 - t0, 1e-9))

    @property
    def rate(self) -> float:
        return self.rates[-1] if self.rates else 0.0

    @property
    def lags(self) -> list[int]:
        return [lag for _, _, lag in self.samples]


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min ago"
    return f"{seconds / 3600:.1f}h ago"


def health(pipeline: Pipeline) -> None:
    st.subheader("Pipeline health")
    reported: dict[str, dict[str, Any]] = {
        str(m["flow"]): m for m in metrics.read_all(pipeline.state_dir / "metrics")
    }
    histories: dict[str, FlowHistory] = st.session_state.setdefault("histories", {})
    now = time.time()
    for name in list(pipeline.flows) + sorted(set(reported) - set(pipeline.flows)):
        m = reported.get(name)
        with st.container(border=True, key=f"flow-{name}"):
            if m is None:
                st.markdown(f"**{name}** · not started (`tidelake run` publishes its metrics)")
                continue
            h = histories.setdefault(name, FlowHistory())
            h.add(m)
            state = str(m.get("state", "?"))
            live = state in ("starting", "running")
            silent = now - float(m.get("updated", now))
            if live and silent > STALE_AFTER:
                state = f"{state}, silent {_ago(silent)}"
            st.markdown(f"**{name}** · {state}")
            cols = st.columns(5)
            rate = h.rate if live else 0.0  # a finished flow moves nothing, whatever it did last
            cols[0].metric("records/s", f"{rate:,.1f}", chart_data=list(h.rates), chart_type="area")
            cols[1].metric("lag", f"{int(m.get('lag', 0)):,}", chart_data=h.lags)
            cols[2].metric("errors", f"{int(m.get('errors', 0)):,}")
            cols[3].metric("dead letters", f"{int(m.get('dead_letters', 0)):,}")
            checkpoint = float(m.get("last_checkpoint", 0.0))
            cols[4].metric("last checkpoint", _ago(now - checkpoint) if checkpoint else "never")
            if m.get("last_error"):
                st.error(str(m["last_error"]))


# -- data panels ---------------------------------------------------------------------


def plain(text: str) -> str:
    """``text`` escaped so Streamlit's markdown shows it as written (``*`` stays ``*``)."""
    return _MARKDOWN.sub(r"\\\g<0>", text)


def draw(panel: Panel, result: pa.Table, time_zone: str) -> None:
    """One panel's chart for a query result (raises on a result that does not fit)."""
    if panel.chart == "table":
        st.dataframe(charts.for_display(result, time_zone).to_pandas(), hide_index=True)
    elif panel.chart == "metric":
        ys = [panel.y] if isinstance(panel.y, str) else list(panel.y or [])
        column = ys[-1] if ys else result.column_names[0]
        if column not in result.column_names:
            raise ValueError(f"column {column!r} is not in the result "
                             f"(columns: {', '.join(result.column_names)})")  # fmt: skip
        data = charts.for_display(result.select([column]), time_zone)
        value = data.column(0)[0].as_py() if len(data) else None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            text = "—"
        else:
            text = f"{value:,}" if isinstance(value, numbers.Number) else str(value)
        st.metric(column, text)
    else:
        if panel.chart == "candlestick":
            drawn = charts.candlesticks(panel, result, time_zone)
        elif panel.chart == "heatmap":
            drawn = [charts.heatmap(panel, result, time_zone)]
        else:
            drawn = [charts.build(panel, result, time_zone)]
        for chart in drawn:
            st.vega_lite_chart(chart.data.to_pandas(), chart.spec, width="stretch")
            if chart.note:
                st.caption(chart.note)


def why_empty(engine: QueryEngine, sql: str) -> str:
    """What a person needs to know about a panel whose query returned no rows."""
    empty: list[str] = []
    filled: list[str] = []
    for name in sorted(referenced_tables(sql)):
        try:
            rows = engine.sql(f"SELECT count(*) FROM {name}").column(0)[0].as_py()
        except Exception:  # noqa: BLE001 - the panel's own query ran, so this is unexpected
            continue
        (filled if rows else empty).append(f"{name} ({rows:,} rows)" if rows else name)
    if empty:
        return (f"No rows yet: {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty "
                "(its flow has not landed anything; is `tidelake run` running?)")  # fmt: skip
    if filled:
        return f"No rows: the query matched none of the rows of {', '.join(filled)}."
    return "No rows: the query returned none."


def panels(pipeline: Pipeline, path: str) -> None:
    if not pipeline.dashboard:
        st.info("This pipeline declares no panels: add a `dashboard:` list to the pipeline file.")
        return
    for row in range(0, len(pipeline.dashboard), 2):
        cols = st.columns(2)
        for i, panel in enumerate(pipeline.dashboard[row : row + 2], start=row):
            with cols[i - row].container(border=True, key=f"panel-{i}"):
                st.markdown(f"**{plain(panel.title)}**")
                try:
                    result = engine(path).sql(panel.sql)
                    if result.num_rows == 0:
                        st.info(plain(why_empty(engine(path), panel.sql)))
                        continue
                    if result.num_rows > MAX_ROWS:
                        st.caption(f"first {MAX_ROWS:,} of {result.num_rows:,} rows")
                        result = result.slice(0, MAX_ROWS)
                    draw(panel, result, pipeline.time_zone)
                except Exception as e:  # a broken panel must not break the page
                    st.error(plain(str(e) or type(e).__name__))


def main() -> None:
    args = parse_args(sys.argv[1:])
    st.set_page_config(page_title="tidelake", layout="wide")
    if not args.pipeline:
        st.error("No pipeline file: run `tidelake dashboard PIPELINE`.")
        return
    path = str(Path(args.pipeline).resolve())
    try:
        pipeline = config.load(path)
    except Exception as e:
        st.error(str(e))
        return
    st.title(pipeline.name)
    st.caption(f"{path} · updates every {args.refresh:g}s")
    every = args.refresh
    st.fragment(run_every=every)(health)(pipeline)
    if pipeline.forms:
        session = operator.login(pipeline)
        st.subheader("Forms")
        if session is None:
            st.info("Log in (in the sidebar) to use the forms.")
        else:
            desk = Desk(pipeline, writer(pipeline.url(pipeline.broker)).write, engine(path).sql)
            operator.forms(desk, session)
    st.subheader("Panels")
    st.fragment(run_every=every)(panels)(pipeline, path)


if __name__ == "__main__":
    main()
