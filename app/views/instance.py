"""Instance: one instance's timeline, steps, anomalies and actions, with an as-of time slider."""

from __future__ import annotations

from datetime import timedelta

import altair as alt
import pandas as pd
import streamlit as st

from analytics.read import queries
from app.data import guarded, source, trace_link

src = source()
st.title("Instance")
st.caption(src.describe())

key = st.text_input("Instance key", value=st.query_params.get("key", ""), placeholder="order-1042")
if not key:
    recent = guarded(queries.RECENT_INSTANCES.format(limit=10))
    if recent.empty:
        st.info("No instances yet. Enter a key once spans have arrived.")
    else:
        st.write("Recent instances — type one of these keys above:")
        st.dataframe(recent[["workflow", "instance_key", "status", "updated_at"]], hide_index=True, width="stretch")
    st.stop()

rows = guarded(queries.instance_row(key))
if rows.empty:
    st.warning(f"No instance called {key!r}. Keys are exact (the Board page searches by part of a key).")
    st.stop()
inst = rows.iloc[0]
workflow = str(inst["workflow"])
st.query_params["key"] = key

c = st.columns(4)
c[0].metric("Status", str(inst["status"]))
c[1].metric("Workflow", workflow)
c[2].metric("Open anomalies", int(inst["open_anomalies"]))
took = (inst["converged_at"] - inst["started_at"]).total_seconds() if pd.notna(inst["converged_at"]) else None
c[3].metric("Time to coherent end", f"{took:.2f} s" if took is not None else "—")

transitions = guarded(
    queries.instance_transitions(workflow, key, inst["started_at"].to_pydatetime(), inst["updated_at"].to_pydatetime())
)
spans = guarded(queries.instance_spans(workflow, key))
anomalies = guarded(queries.instance_anomalies(workflow, key))
history = guarded(queries.instance_history(workflow, key))

st.subheader("Timeline")
#: one x encoding for both layers (one axis): a 24-hour clock with milliseconds, in UTC
TIME = alt.X(
    "time:T", title=queries.TIME_TITLE, scale=alt.Scale(type="utc"),
    axis=alt.Axis(format=queries.TIME_FORMAT + ".%L", labelOverlap="greedy", tickCount=5, labelFlush=True),
)  # fmt: skip
layers = []
if not spans.empty:
    spans["step"] = [", ".join(s) for s in spans["steps"]]
    layers.append(
        alt.Chart(spans.assign(time=spans["start_time"])).mark_bar(opacity=0.35, height=14).encode(
            x=TIME, x2="end_time:T", y=alt.Y("step:N", title=None),
            tooltip=["service", "name", "status", "trace_id", "span_id"],
        )
    )  # fmt: skip
if not transitions.empty:
    layers.append(
        alt.Chart(transitions.assign(time=transitions["event_time"])).mark_point(filled=True, size=90).encode(
            x=TIME, y="step:N", color=alt.Color("state:N"), shape="state:N",
            tooltip=["event_time", "step", "state", "service", "span_id"],
        )
    )  # fmt: skip
if layers:
    st.altair_chart(alt.layer(*layers), width="stretch")

st.subheader("As of")
start = inst["started_at"].to_pydatetime()
end = max(
    inst["updated_at"].to_pydatetime(),
    *(t.to_pydatetime() for t in anomalies["opened_at"]),
    start + timedelta(milliseconds=1),
)
# a datetime slider steps by a day unless told otherwise: over a few seconds the handle snapped to
# the left end while the value (and the caption) said the last moment
step = max(timedelta(milliseconds=1), (end - start) / 500)
as_of = st.slider(
    "Replay the instance up to (UTC)", min_value=start, max_value=end, value=end, step=step,
    format="HH:mm:ss.SSS", key=f"as_of_{key}",
)  # fmt: skip
hist = history[(history["valid_from"] <= as_of) & (history["valid_to"].isna() | (history["valid_to"] > as_of))]
st.write(f"Status at {as_of:%H:%M:%S.%f}"[:-3] + f": **{hist.iloc[0]['status'] if not hist.empty else 'not started'}**")
seen = transitions[transitions["event_time"] <= pd.Timestamp(as_of)]
steps = seen.sort_values("event_time").groupby("step").tail(1)[["step", "state", "event_time", "service", "span_id"]]
st.dataframe(steps, hide_index=True, width="stretch")

st.subheader("Anomalies and actions")
if anomalies.empty:
    st.success("No anomalies for this instance.")
else:
    st.dataframe(anomalies, hide_index=True, width="stretch")

st.subheader("Traces")
for trace_id in inst["trace_ids"]:
    link = trace_link(trace_id)
    st.markdown(f"- [`{trace_id}`]({link})" if link else f"- `{trace_id}`")
st.subheader("Status history")
st.dataframe(history, hide_index=True, width="stretch")
