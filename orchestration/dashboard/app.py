"""The dashboard's Streamlit entry (`streamlit run` this file; `svp dashboard` does): two pages.

Each page module is imported when its page is first shown: the experiments page reads MLflow through
`training.tracking.runs` (which imports Ray), and the curation page should not wait for that.
"""

import streamlit as st

st.set_page_config(page_title="svp dashboard", layout="wide")


def curation() -> None:
    from orchestration.dashboard import curation_page

    curation_page.render()


def experiments() -> None:
    from orchestration.dashboard import experiments_page

    experiments_page.render()


st.navigation(
    [
        st.Page(curation, title="Curation", default=True),
        st.Page(experiments, title="Experiments", url_path="experiments"),
    ]
).run()
