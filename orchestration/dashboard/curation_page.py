"""Curation page: move thresholds, see what survives (overall, per filter, source and bucket), look at the
clips on each side of a threshold, then save the thresholds and apply them to the folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st
from pydantic import ValidationError

from curation.durations import hms, signed_hms
from curation.tables import SOURCES_FILE, read_table
from curation.thresholds import CaptionRules, ScoreRange, Thresholds, thresholds_hash
from orchestration.dashboard import charts, curation_actions, gallery
from orchestration.dashboard.keep_math import (
    ClipFacts,
    diff,
    folder_thresholds,
    keep_curve,
    load_clip_facts,
    range_warnings,
    require_curation_folder,
    summarize,
)
from orchestration.dashboard.launch import dashboard_config

_STATUS_ORDER = {"failed": 0, "rejected": 1, "ok": 2}


@st.cache_resource(max_entries=4, show_spinner="Reading the clips table…")
def _load(folder: str, stamp: tuple[int, ...]) -> tuple[ClipFacts, Thresholds, pd.DataFrame]:
    """The folder's columns, thresholds and sources, read once per version of its clips.parquet."""
    del stamp  # part of the cache key only: a re-filter rewrites clips.parquet
    facts = load_clip_facts(folder)
    sources = read_table(Path(folder) / SOURCES_FILE)
    return facts, folder_thresholds(folder), sources


def _stamp(folder: str) -> tuple[int, ...]:
    files = [Path(folder) / name for name in ("clips.parquet", "thresholds.yaml")]
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in files)


def _pick_folder() -> str | None:
    folders = dashboard_config()["curation"]
    choice = st.selectbox("Curation output folder", folders) if folders else None
    typed = st.text_input("…or another folder", "", placeholder="/path/to/curation/output")
    return typed.strip() or choice


def _bounds_inputs(prefix: str, column: str, rng: ScoreRange | None) -> ScoreRange | None:
    left, right = st.sidebar.columns(2)
    lo = left.number_input(
        f"{column} min", value=rng.min if rng else None, key=f"{prefix}:{column}:min", format="%.4g"
    )
    hi = right.number_input(
        f"{column} max", value=rng.max if rng else None, key=f"{prefix}:{column}:max", format="%.4g"
    )
    return None if lo is None and hi is None else ScoreRange(min=lo, max=hi)


def _threshold_inputs(prefix: str, facts: ClipFacts, current: Thresholds) -> Thresholds:
    """Sidebar inputs for every score's min/max and the caption rules, starting at the folder's thresholds."""
    st.sidebar.header("Thresholds")
    columns = list(dict.fromkeys([*current.scores, *facts.scores.columns]))
    scores = {}
    for column in columns:
        rng = _bounds_inputs(prefix, column, current.scores.get(column))
        if rng is not None:
            scores[column] = rng
    st.sidebar.subheader("Captions")
    rules = current.caption
    require = st.sidebar.checkbox("require a caption", value=rules.require_caption, key=f"{prefix}:cap:req")
    max_issues = st.sidebar.number_input(
        "max caption issues (empty: issues never drop)",
        value=rules.max_caption_issues,
        min_value=0,
        step=1,
        key=f"{prefix}:cap:issues",
    )
    known = sorted(set(gallery.issue_names(facts)) | set(rules.ignore_issues))
    ignore = st.sidebar.multiselect(
        "ignored issues", known, default=rules.ignore_issues, key=f"{prefix}:cap:ignore"
    )
    caption = CaptionRules(
        require_caption=require,
        max_caption_issues=None if max_issues is None else int(max_issues),
        ignore_issues=ignore,
    )
    return Thresholds(scores=scores, caption=caption)


def _counts(summary, base) -> None:
    change = diff(summary, base)
    a, b, c, d = st.columns(4)
    a.metric("clips kept", f"{summary.kept_clips:,} of {summary.clips:,}", delta=f"{change['kept_clips']:+,}")
    # h:mm:ss as `svp curate report` prints it (a demo's few seconds are not "0.004 hours").
    b.metric(
        "time kept",
        f"{hms(summary.kept_hours)} of {hms(summary.total_hours)}",
        delta=signed_hms(change["kept_hours"]),
    )
    c.metric("newly kept", f"{change['newly_kept']:,}")
    d.metric("newly dropped", f"{change['newly_dropped']:,}")
    st.caption("Deltas are against the thresholds the folder was filtered with (its thresholds.yaml).")


def _charts(facts: ClipFacts, t: Thresholds, summary) -> None:
    present = [c for c in facts.scores.columns if facts.scores[c].notna().any()]
    default = [c for c in present if c in t.scores or c.endswith("_score")] or present[:3]
    shown = st.multiselect("Scores to chart", present, default=default)
    for column in shown:
        values = facts.scores[column].to_numpy()
        rng = t.scores.get(column)
        curve = keep_curve(facts, t, column, charts.score_grid(values))
        left, right = st.columns(2)
        left.pyplot(charts.histogram_figure(column, values, summary.kept, rng), clear_figure=False)
        right.pyplot(charts.keep_curve_figure(column, curve, values, rng), clear_figure=False)


def _breakdown(summary, sources: pd.DataFrame) -> None:
    st.subheader("Removed by each filter")
    st.dataframe(summary.per_filter, hide_index=True, width="stretch")
    uris = sources.drop_duplicates("source_id").set_index("source_id")["uri"]
    per_source = summary.per_source.assign(uri=lambda d: d["source_id"].map(uris))
    left, right = st.columns(2)
    left.subheader("Per source")
    left.dataframe(per_source.sort_values("kept"), hide_index=True, width="stretch")
    right.subheader("Per bucket")
    right.dataframe(summary.per_bucket, hide_index=True, width="stretch")


def _sources_table(sources: pd.DataFrame) -> None:
    statuses = st.multiselect("status", ["failed", "rejected", "ok"], default=["failed", "rejected", "ok"])
    text = st.text_input("uri or reason contains", "")
    shown = sources[sources["status"].isin(statuses)]
    if text:
        hay = shown["uri"].astype(str) + " " + shown["reason"].astype(str)
        shown = shown[hay.str.contains(text, case=False, regex=False)]
    shown = shown.sort_values(
        ["status", "uri"], key=lambda s: s.map(_STATUS_ORDER) if s.name == "status" else s
    )
    st.dataframe(shown, hide_index=True, width="stretch")


def render() -> None:
    st.title("Curation thresholds")
    folder = _pick_folder()
    if not folder:
        st.info("Open a curation output folder: `svp dashboard --curation OUT` or type its path above.")
        return
    try:
        folder = str(require_curation_folder(folder).resolve())
        facts, current, sources = _load(folder, _stamp(folder))
    except (OSError, ValueError) as err:
        st.error(f"Cannot open {folder}: {err}")
        return
    generation = st.session_state.get(f"gen:{folder}", 0)
    try:
        t = _threshold_inputs(f"{folder}:{generation}", facts, current)
    except ValidationError as err:
        st.error(f"Thresholds not valid: {err.errors()[0]['msg']}")
        return
    try:
        summary, base = summarize(facts, t), summarize(facts, current)
    except ValueError as err:
        st.error(str(err))
        return
    for note in range_warnings(facts, t):
        st.warning(note)
    st.caption(f"{folder} · thresholds {thresholds_hash(t)} (folder: {thresholds_hash(current)})")
    _counts(summary, base)
    scores_tab, edge_tab, kept_tab, sources_tab, apply_tab = st.tabs(
        ["Scores", "Boundary clips", "Kept by filter, source, bucket", "Sources", "Save and apply"]
    )
    with scores_tab:
        _charts(facts, t, summary)
    with edge_tab:
        gallery.boundary(Path(folder), facts, t, sources)
    with kept_tab:
        _breakdown(summary, sources)
    with sources_tab:
        _sources_table(sources)
    with apply_tab:
        curation_actions.save_and_apply(Path(folder), facts, t)


if __name__ == "__main__":  # executed by `AppTest.from_file` in tests
    render()
