"""The app's pages, declared once: the entry builds its navigation from them, and a page that
opens another (a selected row opens its instance) switches to the very same page object."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent

PAGES = {
    "overview": st.Page(HERE / "views" / "overview.py", title="Overview", icon=":material/explore:", default=True),
    "board": st.Page(HERE / "views" / "board.py", title="Board", icon=":material/view_module:"),
    "convergence": st.Page(HERE / "views" / "convergence.py", title="Convergence", icon=":material/show_chart:"),
    "alerts": st.Page(HERE / "views" / "alerts.py", title="Alerts", icon=":material/notifications_active:"),
    "instance": st.Page(HERE / "views" / "instance.py", title="Instance", icon=":material/search:"),
    "sql": st.Page(HERE / "views" / "sql.py", title="SQL", icon=":material/terminal:"),
}
