"""Boundary gallery: the clips just above and just below a threshold, as thumbnails; a click plays one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import streamlit as st

from curation.format import SHARDS_DIR
from curation.thresholds import Thresholds
from curation.thumbs import THUMBS_DIR
from orchestration.dashboard.keep_math import ClipFacts

PER_SIDE = 6
_PLACEHOLDER = np.full((90, 160, 3), 205, dtype=np.uint8)  # folders curated before thumbnails existed


def issue_names(facts: ClipFacts) -> list[str]:
    if facts.issues is None:
        return []
    return sorted(str(v) for v in pc.unique(pc.list_flatten(facts.issues)).to_pylist() if v is not None)


def boundary_rows(facts: ClipFacts, column: str, threshold: float, per_side: int = PER_SIDE) -> tuple:
    """Indices of the `per_side` clips just at/above `threshold` (closest first) and just below it."""
    values = facts.scores[column].to_numpy()
    judged = np.flatnonzero(~np.isnan(values))
    order = judged[np.argsort(values[judged], kind="stable")]
    split = np.searchsorted(values[order], threshold, side="left")
    above = order[split : split + per_side]
    below = order[max(0, split - per_side) : split][::-1]
    return above, below


def _thumb(out: Path, clip_id: str):
    path = out / THUMBS_DIR / f"{clip_id}.jpg"
    return str(path) if path.is_file() else _PLACEHOLDER


def _clip_card(out: Path, facts: ClipFacts, column: str, i: int, uris: pd.Series, slot) -> None:
    clip_id = facts.clip_ids[i]
    caption = facts.captions[i] if isinstance(facts.captions[i], str) else "(no caption)"
    source = uris.get(facts.source_ids[facts.source_codes[i]], "?")
    slot.image(_thumb(out, clip_id), width="stretch")
    slot.caption(f"**{facts.scores[column].iat[i]:.4g}** · {Path(str(source)).name}  \n{caption[:80]}")
    # A callback runs before the next script run, so the player above the gallery already shows the clip.
    playing = (str(out), clip_id, str(source), float(facts.start_s[i]), float(facts.end_s[i]))
    slot.button("play", key=f"play:{clip_id}", on_click=_play, args=(playing,))


def _play(playing: tuple) -> None:
    st.session_state["playing"] = playing


def _player() -> None:
    playing = st.session_state.get("playing")
    if not playing:
        return
    from curation.shards import TRANSCODED_DIR  # imports the transcoder (torch): only when a clip plays

    out, clip_id, source, start, end = playing
    transcoded = Path(out) / SHARDS_DIR / TRANSCODED_DIR / f"{clip_id}.mp4"
    if transcoded.is_file():
        st.video(str(transcoded))
        st.caption(f"{clip_id}: the transcoded clip from the shards")
    elif Path(source).is_file():
        st.video(source, start_time=int(start), end_time=int(np.ceil(end)))
        st.caption(f"{clip_id}: {start:.2f}–{end:.2f} s of {source} (no transcoded clip kept)")
    else:
        st.warning(f"{clip_id}: neither a transcoded clip nor the source {source} is readable here")


def boundary(out: Path, facts: ClipFacts, t: Thresholds, sources: pd.DataFrame) -> None:
    present = [c for c in facts.scores.columns if facts.scores[c].notna().any()]
    if not present:
        st.info("No score column has values: nothing to draw a boundary on.")
        return
    ordered = [c for c in t.scores if c in present] + [c for c in present if c not in t.scores]
    left, right = st.columns(2)
    column = left.selectbox("Score", ordered, key="edge:column")
    rng = t.scores.get(column)
    bound = right.radio("Boundary", ["min", "max"], horizontal=True, key="edge:bound")
    threshold = getattr(rng, bound) if rng is not None else None
    if threshold is None:
        threshold = float(np.nanmedian(facts.scores[column].to_numpy()))
        st.caption(f"{column} has no {bound}: showing the clips around its median {threshold:.4g}")
    uris = sources.drop_duplicates("source_id").set_index("source_id")["uri"]
    above, below = boundary_rows(facts, column, threshold)
    _player()
    for title, rows in ((f"just above {threshold:.4g}", above), (f"just below {threshold:.4g}", below)):
        st.markdown(f"**{title}**")
        if len(rows) == 0:
            st.caption("no clips on this side")
            continue
        slots = st.columns(PER_SIDE)
        for slot, i in zip(slots, rows, strict=False):
            _clip_card(out, facts, column, int(i), uris, slot)
