"""Convergence: how many instances reach a coherent end, how fast, and the backlog over time."""

from __future__ import annotations

import altair as alt
import streamlit as st

from analytics.read import queries
from app.data import EMPTY_STATE, REFRESH_S, guarded, source

BUCKETS = {
    "1 minute": "1 minute",
    "5 minutes": "5 minutes",
    "15 minutes": "15 minutes",
    "1 hour": "1 hour",
    "1 day": "1 day",
}

src = source()
#: window starts on a 24-hour clock, in UTC (the stored times are UTC), said on the axis
TIME_X = alt.X("window_start:T", title=queries.TIME_TITLE, scale=alt.Scale(type="utc"), axis=alt.Axis(format="%H:%M"))
st.title("Convergence")
st.caption("Per workflow and time window of instance start. " + src.describe())
bucket = st.selectbox("Window", list(BUCKETS), index=0)


@st.fragment(run_every=REFRESH_S if src.live else None)
def charts() -> None:
    conv = guarded(queries.convergence(BUCKETS[bucket]))
    if conv.empty:
        st.info(EMPTY_STATE, icon=":material/inbox:")
        return
    totals = conv.groupby("workflow")[["started", *queries.COHERENT]].sum()
    for workflow, row in totals.iterrows():
        coherent = sum(row[s] for s in queries.COHERENT) / row["started"] if row["started"] else 0
        st.metric(f"`{workflow}` convergence rate (all windows)", f"{coherent:.1%}")
    long = conv.melt(
        id_vars=["workflow", "window_start"],
        value_vars=list(queries.STATUSES),
        var_name="status",
        value_name="instances",
    )
    st.subheader("Statuses per window")
    st.altair_chart(
        alt.Chart(long).mark_bar().encode(
            x=TIME_X, y=alt.Y("instances:Q", stack="zero"),
            color=alt.Color("status:N", scale=alt.Scale(domain=list(queries.STATUS_COLORS), range=list(queries.STATUS_COLORS.values()))),
            tooltip=["workflow", "window_start", "status", "instances"],
        ),
        width="stretch",
    )  # fmt: skip
    st.subheader("Convergence rate and backlog")
    conv["backlog"] = conv[list(queries.BACKLOG)].sum(axis=1)
    base = alt.Chart(conv).encode(x=TIME_X)
    st.altair_chart(
        alt.layer(
            base.mark_line(point=True).encode(
                y=alt.Y("convergence_rate:Q", axis=alt.Axis(format="%")), color="workflow:N"
            ),
            base.mark_bar(opacity=0.3).encode(y=alt.Y("backlog:Q", title="backlog (running + stalled)")),
        ).resolve_scale(y="independent"),
        width="stretch",
    )
    st.subheader("Time to converge")
    quant = conv.melt(
        id_vars=["workflow", "window_start"],
        value_vars=["p50_seconds", "p95_seconds", "p99_seconds"],
        var_name="quantile",
        value_name="seconds",
    )
    st.altair_chart(
        alt.Chart(quant.dropna()).mark_line(point=True).encode(
            x=TIME_X, y="seconds:Q", color="quantile:N", strokeDash="workflow:N",
            tooltip=["workflow", "window_start", "quantile", "seconds"],
        ),
        width="stretch",
    )  # fmt: skip
    dist = guarded(
        "SELECT workflow, epoch(converged_at - started_at) AS seconds FROM instances "
        "WHERE converged_at IS NOT NULL ORDER BY updated_at DESC LIMIT 20000"
    )
    if not dist.empty:
        st.altair_chart(
            alt.Chart(dist).mark_bar().encode(
                x=alt.X("seconds:Q", bin=alt.Bin(maxbins=40), title="seconds to a coherent end"),
                y=alt.Y("count():Q", title="instances"), color="workflow:N",
            ),
            width="stretch",
        )  # fmt: skip
    st.dataframe(conv, hide_index=True, width="stretch")


charts()
