"""SQL: a read-only console over the coordination history, with the README's questions."""

from __future__ import annotations

import streamlit as st

from analytics.read.examples import EXAMPLES
from app.data import DataError, query, source

src = source()
st.title("SQL")
st.caption("Read-only: one SELECT at a time. " + src.describe())

titles = [t for t, _ in EXAMPLES]
choice = st.selectbox("Example questions", titles, index=None, placeholder="pick a question, or write your own below")
if choice is not None and st.session_state.get("_example") != choice:
    st.session_state["_example"] = choice
    st.session_state["sql"] = dict(EXAMPLES)[choice]
sql = st.text_area("SQL", key="sql", height=200, placeholder="SELECT status, count(*) FROM instances GROUP BY status")

if st.button("Run", type="primary") and sql.strip():
    try:
        result = query(sql)
    except DataError as exc:
        st.error(str(exc), icon=":material/error:")
    else:
        st.caption(f"{len(result):,} rows")
        st.dataframe(result, hide_index=True, width="stretch")
        st.download_button(
            "Download CSV", result.to_csv(index=False).encode(), file_name="coordstate-query.csv", mime="text/csv"
        )
