"""Experiments page: a pipeline's stage runs as a table; pick two or more to see only what differs
(params, lineage), their loss and lr curves on one step axis, perf metrics, eval metrics (with the data they
trained on) and sample videos."""

from __future__ import annotations

import streamlit as st

from orchestration.dashboard import run_table as rt
from orchestration.dashboard.launch import dashboard_config


@st.cache_resource(ttl=30, show_spinner="Reading the MLflow store…")
def _table(uri: str, pipeline: str | None):
    client = rt.client_for(uri)
    return client, rt.stage_table(client, pipeline)


def _store_uri() -> str | None:
    configured = dashboard_config()["tracking_uri"] or ""
    typed = st.text_input(
        "MLflow store", configured, placeholder="sqlite:///WORK_DIR/mlflow.db or http://host:5000"
    )
    return typed.strip() or None


def _compare(client, rows) -> None:
    _table_or_caption("Params that differ", rt.differing_params(client, rows), "every param is the same")
    _table_or_caption(
        "Lineage that differs",
        rt.differing_lineage(client, rows),
        "same data fingerprint, thresholds hash, git commit and init-from",
    )
    weight = st.slider("smoothing", 0.0, 0.95, 0.0, 0.05, key="exp:smooth")
    left, right = st.columns(2)
    for slot, metric in ((left, rt.LOSS), (right, rt.LR)):
        slot.pyplot(
            rt.curves_figure(rt.metric_curves(client, rows, metric), metric, weight), clear_figure=False
        )
    st.subheader("Perf (last value)")
    st.dataframe(rt.perf_table(client, rows), width="stretch")
    _evals(client, rows, weight)
    _samples(client, rows)


def _evals(client, rows, weight: float) -> None:
    """The runs' eval metrics beside their data fingerprint and thresholds hash, and one metric over steps."""
    table = rt.eval_table(client, rows)
    _table_or_caption("Eval (latest)", table, "no eval metrics: `svp eval` or a stage's eval: block")
    if not len(table):
        return
    names = [n for n in table.index if n not in ("step", "dataset", "thresholds")]
    metric = rt.EVAL_PREFIX + st.selectbox("eval metric over steps", names, key="exp:eval")
    st.pyplot(rt.curves_figure(rt.metric_curves(client, rows, metric), metric, weight), clear_figure=False)
    if st.checkbox("eval videos side by side", key="exp:eval-videos"):  # downloads every run's videos
        _side_by_side(rt.eval_videos(client, rows), "eval video", "exp:eval-video", "(not evaluated)")


def _table_or_caption(title: str, table, when_empty: str) -> None:
    st.subheader(title)
    if len(table):
        st.dataframe(table, width="stretch")
    else:
        st.caption(when_empty)


def _samples(client, rows) -> None:
    if not _side_by_side(
        rt.sample_videos(client, rows), "sample of step", "exp:sample", "(no sample at this step)"
    ):
        st.caption("no sample videos logged by these runs")


def _side_by_side(videos: dict[str, dict[str, str]], label: str, key: str, missing: str) -> bool:
    """One video (picked by file name) of every run in a row of columns; False when there is none. The pick
    starts at the latest name every run has (side by side), else the latest of any."""
    names = sorted(set().union(*[v.keys() for v in videos.values()]))
    if not names:
        return False
    shared = set.intersection(*[set(v) for v in videos.values()])
    start = names.index(max(shared)) if shared else len(names) - 1
    name = st.selectbox(label, names, index=start, key=key)
    for slot, (run, files) in zip(st.columns(len(videos)), videos.items(), strict=True):
        slot.caption(run)
        if name in files:
            slot.video(files[name])
        else:
            slot.caption(missing)
    return True


def render() -> None:
    st.title("Experiments")
    uri = _store_uri()
    if not uri:
        st.info(
            "Point at a store: `svp dashboard --runs WORK_DIR` or `--tracking-uri URI`, or type it above."
        )
        return
    try:
        client, table = _table(uri, None)
    except Exception as err:  # a bad URI or an empty store: a message, not a traceback
        st.error(f"{uri}: {err}")
        return
    pipelines = sorted(set(table["pipeline"]))
    pipeline = st.selectbox("Pipeline", ["(all)", *pipelines], key="exp:pipeline")
    shown = table if pipeline == "(all)" else table[table["pipeline"] == pipeline]
    st.dataframe(shown, hide_index=True, width="stretch")
    labels = {f"{r.stage}@{r.run_id[:8]} ({r.pipeline})": r.run_id for r in shown.itertuples()}
    # `?compare=RUN_ID,RUN_ID` preselects runs: a comparison can be shared as a link.
    wanted = set(filter(None, st.query_params.get("compare", "").split(",")))
    default = [label for label, rid in labels.items() if rid in wanted or rid[:8] in wanted]
    picked = st.multiselect("Compare runs (two or more)", list(labels), default=default, key="exp:pick")
    if len(picked) < 2:
        st.caption("pick two or more runs to compare them")
        return
    _compare(client, rt.resolve(table, [labels[p] for p in picked]))


if __name__ == "__main__":  # executed by `AppTest.from_file` in tests
    render()
