"""The "Save and apply" tab: write the thresholds as YAML, then re-filter the folder in the background."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from curation.thresholds import Thresholds, thresholds_hash
from orchestration.dashboard.apply_job import ApplyJob, save_thresholds
from orchestration.dashboard.keep_math import ClipFacts, summarize

JOB_KEY = "apply_job"


def _propose_name(t: Thresholds) -> None:
    """Name the file after the thresholds as edited now, and follow the edits, until the user types a name
    of their own (a keyed widget would otherwise keep the first proposal: the folder's own hash)."""
    proposal = f"thresholds-{thresholds_hash(t)}.yaml"
    if st.session_state.get("save:name") in (None, st.session_state.get("save:proposed")):
        st.session_state["save:name"] = proposal
    st.session_state["save:proposed"] = proposal


def _save(out: Path, t: Thresholds) -> None:
    _propose_name(t)
    target = st.text_input("Save thresholds as…", key="save:name")
    overwrite = st.checkbox("overwrite if it exists", value=False, key="save:overwrite")
    if st.button("Save thresholds", key="save:go"):
        try:
            path = save_thresholds(out, target, t, overwrite)
        except (OSError, ValueError) as err:
            st.error(str(err))
            return
        st.session_state[f"saved:{out}"] = str(path)
        st.success(f"saved {path} — `svp curate filter {out} --thresholds {path}` applies it")


def _start_apply(out: Path, facts: ClipFacts, saved: str) -> None:
    from curation.thresholds import load_thresholds

    try:
        summarize(facts, load_thresholds(saved))  # the re-filter's own checks, before it writes anything
    except (OSError, ValueError) as err:
        st.error(f"not applied: {err}")
        return
    st.session_state[JOB_KEY] = ApplyJob(out, Path(saved)).start()


@st.fragment(run_every=1.0)
def _progress(out: Path) -> None:
    job: ApplyJob | None = st.session_state.get(JOB_KEY)
    if job is None or job.out_dir != out:
        return
    if not job.done:
        st.info(f"re-filtering… {job.elapsed():.0f} s")
        st.code("\n".join(job.lines[-8:]) or "starting", language=None)  # log lines: plain text
        return
    if job.error:
        st.error(
            f"apply failed after {job.elapsed():.1f} s: {job.error}. clips.parquet and thresholds.yaml are unchanged."
        )
    else:
        from curation.report import format_report  # pulls in the shard writer: only once a report exists

        st.success(f"applied {job.thresholds_path.name} in {job.elapsed():.1f} s")
        st.code(format_report(job.report), language=None)  # the report's tables: plain text
    if not st.session_state.get(f"reloaded:{id(job)}"):
        st.session_state[f"reloaded:{id(job)}"] = True
        # New thresholds on disk: restart the inputs from them and reload the tables.
        st.session_state[f"gen:{out}"] = st.session_state.get(f"gen:{out}", 0) + 1
        st.rerun()


def save_and_apply(out: Path, facts: ClipFacts, t: Thresholds) -> None:
    _save(out, t)
    saved = st.session_state.get(f"saved:{out}")
    st.divider()
    job: ApplyJob | None = st.session_state.get(JOB_KEY)
    busy = job is not None and not job.done
    label = f"Apply {Path(saved).name} to the folder (rewrites shards)" if saved else "Apply (save first)"
    if st.button(label, key="apply:go", disabled=not saved or busy):
        _start_apply(out, facts, saved)
    _progress(out)
