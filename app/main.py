"""coordstate's app: the entry only builds navigation; one file per page under ``app/pages``."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent

st.set_page_config(page_title="coordstate", page_icon=":material/explore:", layout="wide")

pages = [
    st.Page(HERE / "pages" / "overview.py", title="Overview", icon=":material/explore:", default=True),
    st.Page(HERE / "pages" / "board.py", title="Board", icon=":material/view_module:"),
    st.Page(HERE / "pages" / "convergence.py", title="Convergence", icon=":material/show_chart:"),
    st.Page(HERE / "pages" / "alerts.py", title="Alerts", icon=":material/notifications_active:"),
    st.Page(HERE / "pages" / "instance.py", title="Instance", icon=":material/search:"),
    st.Page(HERE / "pages" / "sql.py", title="SQL", icon=":material/terminal:"),
]
st.navigation(pages).run()
