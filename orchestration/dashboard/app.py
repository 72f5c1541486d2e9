"""The dashboard's Streamlit entry (`streamlit run` this file; `svp dashboard` does): two pages."""

import streamlit as st

from orchestration.dashboard import curation_page, experiments_page

st.set_page_config(page_title="svp dashboard", layout="wide")
st.navigation(
    [
        st.Page(curation_page.render, title="Curation", default=True),
        st.Page(experiments_page.render, title="Experiments", url_path="experiments"),
    ]
).run()
