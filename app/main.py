"""coordstate's app: the entry only builds navigation; one file per page under ``app/views`` (not ``pages/``: Streamlit would also list that folder as pages of its own)."""

from __future__ import annotations

import streamlit as st

from app.nav import PAGES

st.set_page_config(page_title="coordstate", page_icon=":material/explore:", layout="wide")

st.navigation(list(PAGES.values())).run()
