"""Board: instances × steps, coloured by step state — where does every order stand?"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from analytics.read import queries
from app.data import EMPTY_STATE, REFRESH_S, guarded, open_selected, source

STATE_COLORS = alt.Scale(domain=list(queries.STATE_COLORS), range=list(queries.STATE_COLORS.values()))

src = source()
st.title("Board")
st.caption("Every instance and every step; grey is a step not seen yet. " + src.describe())

c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
statuses = c1.multiselect("Status", list(queries.STATUSES), placeholder="any status")
key = c2.text_input("Search by key", placeholder="order-1042")
only_anomalies = c3.checkbox("With open anomalies")
limit = c4.selectbox("Show", [50, 100, 200, 500], index=1)


def matrix(rows: pd.DataFrame) -> pd.DataFrame:
    cells = []
    for r in rows.to_dict("records"):
        states = dict(zip(r["step_names"], r["step_states"], strict=True))
        for step in all_steps(rows):
            cells.append(
                {
                    "instance": r["instance_key"],
                    "status": r["status"],
                    "step": step,
                    "state": states.get(step, "pending"),
                }
            )
    return pd.DataFrame(cells)


def all_steps(rows: pd.DataFrame) -> list[str]:
    seen: list[str] = []
    for names in rows.step_names:
        seen.extend(n for n in names if n not in seen)
    return seen


@st.fragment(run_every=REFRESH_S if src.live else None)
def board() -> None:
    rows = guarded(queries.board(statuses, key, only_anomalies, limit))
    if rows.empty:
        st.info(EMPTY_STATE if not (statuses or key or only_anomalies) else "No instance matches these filters.")
        return
    cells = matrix(rows)
    order = list(rows.instance_key)
    chart = (
        alt.Chart(cells)
        .mark_rect(stroke="white")
        .encode(
            x=alt.X("step:N", sort=all_steps(rows), title=None, axis=alt.Axis(orient="top", labelAngle=0)),
            y=alt.Y("instance:N", sort=order, title=None),
            color=alt.Color("state:N", scale=STATE_COLORS),
            tooltip=["instance", "status", "step", "state"],
        )
        .properties(height=max(120, 24 * len(order)))
    )
    st.altair_chart(chart, width="stretch")
    st.caption("Select a row to open its instance.")
    table = rows[["workflow", "instance_key", "status", "open_anomalies", "updated_at"]]
    picked = st.dataframe(
        table, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row", key="board_rows"
    )
    open_selected(table, picked)


board()
