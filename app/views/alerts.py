"""Alerts: open and resolved anomalies, what to do about them, and how long they took to heal."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from analytics.read import queries
from analytics.read.queries import KINDS
from app.data import REFRESH_S, guarded, open_selected, source, trace_link

src = source()
st.title("Alerts")
st.caption(src.describe())
c1, c2, c3 = st.columns([1, 2, 1])
show = c1.radio("Show", ["Open", "Resolved", "All"], horizontal=True)
kinds = c2.multiselect("Kind", list(KINDS), placeholder="any kind")
severity = c3.multiselect("Severity", list(queries.SEVERITIES), placeholder="any severity")


@st.fragment(run_every=REFRESH_S if src.live else None)
def alerts() -> None:
    rows = guarded(queries.alerts(show, kinds, severity))
    if rows.empty:
        st.success("No anomalies match." if kinds or severity or show != "Open" else "No open anomalies.")
        return
    open_count = int(rows["resolved_at"].isna().sum())
    cols = st.columns(4)
    cols[0].metric("Shown", len(rows))
    cols[1].metric("Open", open_count)
    healed = rows["healed_after_seconds"].dropna()
    cols[2].metric("Median time to heal", f"{healed.median():.1f} s" if not healed.empty else "—")
    untold = int((rows["resolved_at"].isna() & rows["alerted_at"].isna()).sum())
    cols[3].metric("Open, not yet alerted", untold, help="no alert target has acknowledged them (or none is set)")
    rows["trace"] = [trace_link(t) if isinstance(t, str) else None for t in rows["trace_id"]]
    column_config: dict[str, Any] = {
        "suggested_action": st.column_config.TextColumn("suggested action", width="large"),
        "message": st.column_config.TextColumn("message", width="large"),
        "age_seconds": st.column_config.NumberColumn("age (s)", format="%.1f"),
        "healed_after_seconds": st.column_config.NumberColumn("healed after (s)", format="%.1f"),
        "alerted_at": st.column_config.DatetimeColumn("alerted", help="first delivered to an alert target"),
        "alert_resolved_at": st.column_config.DatetimeColumn("alert resolved", help="resolution delivered"),
        "action_delivery": st.column_config.TextColumn("action", help="the reconciliation webhook's latest outcome"),
    }
    if src.trace_url:
        column_config["trace"] = st.column_config.LinkColumn("trace", display_text="open trace")
    visible = [c for c in rows.columns if c != "trace_id" and (c != "trace" or src.trace_url)]
    table = pd.DataFrame(rows[visible])
    picked = st.dataframe(table, hide_index=True, width="stretch", column_config=column_config,
                          on_select="rerun", selection_mode="single-row", key="alert_rows")  # fmt: skip
    open_selected(table, picked)
    if not src.trace_url:
        st.caption(
            "Set a trace link template (`coordstate ui --trace-url 'http://jaeger:16686/trace/{trace_id}'`) to jump to the evidence."
        )


alerts()
