"""Overview: per workflow, instances by status, convergence, open anomalies, ingest health."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from analytics.read import queries
from app.data import EMPTY_STATE, REFRESH_S, DataError, guarded, metrics, query, source

STATUS_COLORS = alt.Scale(domain=list(queries.STATUS_COLORS), range=list(queries.STATUS_COLORS.values()))

src = source()
st.title("Where every process stands")
st.caption(src.describe())


def workflow_cards(status: pd.DataFrame) -> None:
    for row in status.itertuples():
        st.subheader(f"Workflow `{row.workflow}`")
        cols = st.columns(7)
        cols[0].metric("Instances", f"{row.instances:,}")
        cols[1].metric("Convergence rate", f"{row.convergence_rate:.1%}")
        cols[2].metric("Running", f"{row.running:,}")
        cols[3].metric("Stalled", f"{row.stalled:,}")
        cols[4].metric("Diverged", f"{row.diverged:,}")
        cols[5].metric("Degraded", f"{row.degraded:,}")
        cols[6].metric("Failed / compensated", f"{row.failed:,} / {row.compensated:,}")
    long = status.melt(id_vars=["workflow"], value_vars=list(queries.STATUSES), var_name="status", value_name="count")
    chart = (
        alt.Chart(long)
        .mark_bar(size=26)
        .encode(
            y=alt.Y("workflow:N", title=None),
            x=alt.X("count:Q", stack="normalize", title="share of instances"),
            color=alt.Color("status:N", scale=STATUS_COLORS, legend=alt.Legend(orient="bottom", columns=5)),
            tooltip=["workflow", "status", "count"],
        )
        .properties(height=50 + 34 * len(status))
    )
    st.altair_chart(chart, width="stretch")


def open_anomalies() -> None:
    st.subheader("Open anomalies")
    anomalies = guarded(queries.OVERVIEW_ANOMALIES)
    if anomalies.empty:
        st.success("No open anomalies: every instance is coherent or still within its deadline.")
        return
    st.dataframe(anomalies, hide_index=True, width="stretch")


def ingest_health() -> None:
    st.subheader("Ingest health")
    if not src.live:
        st.caption("Ingest figures come from a live server; this is an offline file.")
        return
    try:
        m = metrics()
    except DataError as exc:
        st.error(str(exc), icon=":material/power_off:")
        return
    received = m.get("spans_received_total", 0.0)
    rate = m.get("spans_per_second", 0.0)  # the server's own 10 s rate: right on the first render too
    rejected = sum(v for k, v in m.items() if k.startswith("spans_rejected_total"))
    cols = st.columns(5)
    cols[0].metric("Spans/s", f"{rate:,.0f}")
    cols[1].metric("Spans received", f"{received:,.0f}")
    cols[2].metric("Rejected", f"{rejected:,.0f}")
    unkeyed = m.get('spans_dropped_total{reason="unkeyed"}', 0.0)
    cols[3].metric("Unkeyed", f"{unkeyed:,.0f}")
    cols[4].metric("Commit latency", f"{m.get('commit_latency_seconds', 0) * 1000:,.1f} ms")


def model_drift() -> None:
    """A banner per drifting step: the model, not an instance, needs attention."""
    try:
        drifting = query(queries.MODEL_DRIFT)
    except DataError:  # a database written before model health existed
        return
    for row in drifting.itertuples():
        st.warning(f"**Model drift** in `{row.workflow}`: {row.hint}", icon=":material/rule:")


@st.fragment(run_every=REFRESH_S if src.live else None)
def live_overview() -> None:
    model_drift()
    status = guarded(queries.OVERVIEW_STATUS)
    if status.empty:
        st.info(EMPTY_STATE, icon=":material/inbox:")
    else:
        workflow_cards(status)
        open_anomalies()
    ingest_health()


live_overview()
