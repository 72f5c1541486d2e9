"""What a set of thresholds keeps, computed fast enough to answer a slider: plain numpy, no Streamlit.

The columns a curation folder's clips table needs for this are read once (`load_clip_facts`); every
threshold change is then a few vectorised comparisons and `bincount`s. The rule itself is not restated
here: the masks come from `curation.thresholds` (`score_failures`, `caption_failures`), the functions
`svp curate filter` applies, so the counts shown are the counts the re-filter produces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from curation.format import FRAME_BUCKETS, THRESHOLDS_FILE
from curation.tables import CLIPS_FILE, SOURCES_FILE
from curation.thresholds import (
    Thresholds,
    caption_failures,
    caption_issue_counts,
    has_caption,
    load_thresholds,
    score_failures,
    score_values,
)

_HOUR = 3600.0
# Numeric clip columns that are positions, not qualities: no slider for them.
_NOT_SCORES = {"start_frame", "end_frame", "start_s", "end_s", "kept"}
_FACT_COLUMNS = (
    "clip_id",
    "source_id",
    "start_s",
    "end_s",
    "fps",
    "width",
    "height",
    "caption",
    "caption_issues",
)


def is_curation_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / CLIPS_FILE).is_file() and (Path(path) / SOURCES_FILE).is_file()


def require_curation_folder(path: str | os.PathLike) -> Path:
    """`path` if it holds a curation output, else a one-line error saying what is missing."""
    p = Path(path)
    if not p.is_dir():
        raise NotADirectoryError(f"{p} is not a folder")
    missing = [n for n in (CLIPS_FILE, SOURCES_FILE) if not (p / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{p} is not a curation output folder (no {' or '.join(missing)}): run `svp curate --output {p}` first"
        )
    return p


@dataclass
class ClipFacts:
    """The per-clip columns the threshold math needs, as numpy arrays (loaded once per folder)."""

    clip_ids: np.ndarray
    seconds: np.ndarray
    scores: pd.DataFrame  # float64 score columns, one per numeric column of the clips table
    source_codes: np.ndarray
    source_ids: list[str]
    bucket_codes: np.ndarray
    buckets: list[str]
    captioned: np.ndarray
    captions: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    issues: pa.ChunkedArray | None = None  # raw caption_issues, None when the table has none
    _issue_counts: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.clip_ids)

    def issue_counts(self, ignore: list[str]) -> np.ndarray | None:
        if self.issues is None:
            return None
        key = tuple(sorted(ignore))
        if key not in self._issue_counts:  # per-row lists: computed once per ignore set
            self._issue_counts[key] = caption_issue_counts(self.issues, list(key))
        return self._issue_counts[key]


def _bucket_codes(
    frame: pd.DataFrame, fps: float, short_side: int, max_frames: int
) -> tuple[np.ndarray, list[str]]:
    """Per clip, the shard bucket (`HxW_tN`) it would land in under the shard settings: (codes, names)."""
    seconds = (frame["end_s"] - frame["start_s"]).to_numpy(dtype=np.float64)
    frames = np.clip(np.ceil(seconds * fps - 1e-6), 1, max_frames)
    buckets = np.asarray(FRAME_BUCKETS)
    pos = np.searchsorted(buckets, frames, side="right") - 1
    t = np.where(pos >= 0, buckets[np.maximum(pos, 0)], 0)
    w = frame["width"].to_numpy(dtype=np.float64)
    h = frame["height"].to_numpy(dtype=np.float64)
    known = ~(np.isnan(w) | np.isnan(h))
    w, h = np.where(known, w, 1), np.where(known, h, 1)
    short, long_ = np.minimum(w, h), np.maximum(w, h)
    scaled = np.maximum(2, np.round(long_ * short_side / short / 2) * 2).astype(np.int64)
    out_w = np.where(w <= h, short_side, scaled)
    out_h = np.where(w <= h, scaled, short_side)
    # Labels for the few distinct buckets only: formatting a million strings would cost seconds.
    keys = np.stack([known.astype(np.int64), out_h, out_w, t]).T
    uniques, codes = np.unique(keys, axis=0, return_inverse=True)
    names = [f"{a}x{b}_t{c}" if ok else "unknown" for ok, a, b, c in uniques.tolist()]
    return codes.reshape(-1), names


def score_column_names(out_dir: str | os.PathLike) -> list[str]:
    """Numeric columns of the clips table that a threshold can apply to (read from the parquet schema)."""
    schema = pq.read_schema(Path(out_dir) / CLIPS_FILE)
    numeric = [f.name for f in schema if _is_numeric(f.type) and f.name not in _NOT_SCORES]
    # Scorer outputs first (motion_score, motion_peak, aesthetic_score, …), then width/height/fps and the rest.
    return sorted(
        numeric, key=lambda n: (not (n.endswith("_score") or n.startswith("motion_")), numeric.index(n))
    )


def _is_numeric(typ) -> bool:
    import pyarrow.types as pt

    return pt.is_integer(typ) or pt.is_floating(typ)


def load_clip_facts(out_dir: str | os.PathLike) -> ClipFacts:
    """Read only the columns the threshold math and galleries need from `OUT/clips.parquet`."""
    from curation.shards import ShardConfig, read_shard_config

    out = require_curation_folder(out_dir)
    schema_names = set(pq.read_schema(out / CLIPS_FILE).names)
    scores = score_column_names(out)
    columns = [c for c in dict.fromkeys([*_FACT_COLUMNS, *scores]) if c in schema_names]
    missing = {"clip_id", "source_id", "start_s", "end_s"} - set(columns)
    if missing:
        raise ValueError(f"{out / CLIPS_FILE} lacks the columns {', '.join(sorted(missing))}")
    table = pq.read_table(out / CLIPS_FILE, columns=columns)
    # Caption issues stay an arrow list column: converting a million lists to Python costs seconds.
    issues = table.column("caption_issues") if "caption_issues" in columns else None
    frame = table.drop_columns([c for c in ("caption_issues",) if c in columns]).to_pandas()
    for col in ("width", "height", "fps"):
        if col not in frame.columns:
            frame[col] = np.nan
    cfg = read_shard_config(out) or ShardConfig()
    bucket_codes, bucket_names = _bucket_codes(frame, cfg.fps, cfg.short_side, cfg.max_frames)
    source_codes, source_ids = pd.factorize(frame["source_id"].astype(str), sort=True)
    captions = frame["caption"] if "caption" in frame.columns else pd.Series([None] * len(frame))
    return ClipFacts(
        clip_ids=frame["clip_id"].astype(str).to_numpy(),
        seconds=(frame["end_s"] - frame["start_s"]).to_numpy(dtype=np.float64),
        scores=frame[scores].apply(pd.to_numeric, errors="coerce").astype(np.float64),
        source_codes=source_codes,
        source_ids=list(source_ids),
        bucket_codes=bucket_codes,
        buckets=bucket_names,
        captioned=has_caption(captions),
        captions=captions.to_numpy(dtype=object),
        start_s=frame["start_s"].to_numpy(dtype=np.float64),
        end_s=frame["end_s"].to_numpy(dtype=np.float64),
        issues=issues,
    )


def folder_thresholds(out_dir: str | os.PathLike) -> Thresholds:
    """The thresholds that produced the folder's `kept` column (the built-in defaults if it has none)."""
    from curation.thresholds import default_thresholds

    path = Path(out_dir) / THRESHOLDS_FILE
    return load_thresholds(path) if path.is_file() else default_thresholds()


def failures(facts: ClipFacts, t: Thresholds) -> dict[str, np.ndarray]:
    """Per filter, the clips it drops — through the same functions `svp curate filter` uses."""
    failed: dict[str, np.ndarray] = {}
    for column, rng in t.scores.items():
        failed |= score_failures(column, score_values(facts.scores, column), rng)
    return failed | caption_failures(t.caption, facts.captioned, facts.issue_counts(t.caption.ignore_issues))


@dataclass
class KeepSummary:
    clips: int
    kept: np.ndarray  # bool per clip
    kept_clips: int
    kept_hours: float
    total_hours: float
    per_filter: pd.DataFrame  # filter, removed, removed_hours, alone (only this filter), alone_hours
    per_source: pd.DataFrame  # source_id, clips, kept, kept_hours
    per_bucket: pd.DataFrame  # bucket, clips, kept, kept_hours


def _hours(seconds: np.ndarray, mask: np.ndarray) -> float:
    return float(np.nansum(seconds[mask])) / _HOUR


def _grouped(codes: np.ndarray, names: list[str], kept: np.ndarray, seconds: np.ndarray, label: str):
    n = len(names)
    clips = np.bincount(codes, minlength=n)
    kept_n = np.bincount(codes, weights=kept, minlength=n).astype(int)
    kept_h = np.bincount(codes, weights=np.where(kept, np.nan_to_num(seconds), 0.0), minlength=n) / _HOUR
    return pd.DataFrame({label: names, "clips": clips, "kept": kept_n, "kept_hours": kept_h})


def summarize(facts: ClipFacts, t: Thresholds) -> KeepSummary:
    """Kept clips and hours overall, per filter, per source and per bucket under thresholds `t`."""
    failed = failures(facts, t)
    names = t.filter_names()
    n = len(facts)
    stack = np.stack([failed[k] for k in names]) if names else np.zeros((0, n), dtype=bool)
    fail_count = stack.sum(axis=0) if names else np.zeros(n, dtype=int)
    kept = fail_count == 0
    rows = []
    for i, name in enumerate(names):
        alone = stack[i] & (fail_count == 1)
        rows.append(
            {
                "filter": name,
                "removed": int(stack[i].sum()),
                "removed_hours": _hours(facts.seconds, stack[i]),
                "only_this": int(alone.sum()),
                "only_this_hours": _hours(facts.seconds, alone),
            }
        )
    return KeepSummary(
        clips=n,
        kept=kept,
        kept_clips=int(kept.sum()),
        kept_hours=_hours(facts.seconds, kept),
        total_hours=_hours(facts.seconds, np.ones(n, dtype=bool)),
        per_filter=pd.DataFrame(
            rows, columns=["filter", "removed", "removed_hours", "only_this", "only_this_hours"]
        ),
        per_source=_grouped(facts.source_codes, facts.source_ids, kept, facts.seconds, "source_id"),
        per_bucket=_grouped(facts.bucket_codes, facts.buckets, kept, facts.seconds, "bucket"),
    )


def diff(new: KeepSummary, old: KeepSummary) -> dict:
    """How `new` differs from `old` (the folder's current thresholds): kept deltas and clips that flip."""
    return {
        "kept_clips": new.kept_clips - old.kept_clips,
        "kept_hours": new.kept_hours - old.kept_hours,
        "newly_kept": int((new.kept & ~old.kept).sum()),
        "newly_dropped": int((old.kept & ~new.kept).sum()),
    }


def keep_curve(facts: ClipFacts, t: Thresholds, column: str, grid: np.ndarray) -> pd.DataFrame:
    """Share of clips and of hours kept if `column`'s min were each value of `grid`, every other filter as
    in `t` (its own max included)."""
    others = Thresholds(scores={c: r for c, r in t.scores.items() if c != column}, caption=t.caption)
    failed = failures(facts, others)
    ok = ~np.any(np.stack(list(failed.values())), axis=0) if failed else np.ones(len(facts), dtype=bool)
    values = score_values(facts.scores, column)
    rng = t.scores.get(column)
    if rng is not None and rng.max is not None:
        ok &= ~(values > rng.max)
    # A clip is kept at grid value g when its score >= g: with pos = how many grid values are <= the
    # score, it is kept at the first pos grid values. NaN never fails a min: kept at every grid value.
    pos = np.where(np.isnan(values), len(grid), np.searchsorted(grid, values, side="right"))
    secs = np.nan_to_num(facts.seconds)
    clips_at = np.bincount(pos[ok], minlength=len(grid) + 1)[::-1].cumsum()[::-1][1:]
    secs_at = np.bincount(pos[ok], weights=secs[ok], minlength=len(grid) + 1)[::-1].cumsum()[::-1][1:]
    return pd.DataFrame(
        {
            "threshold": grid,
            "clips": clips_at / max(len(facts), 1),
            "hours": secs_at / max(float(secs.sum()), 1e-12),
        }
    )


def range_warnings(facts: ClipFacts, t: Thresholds) -> list[str]:
    """Thresholds that lie outside their score's range, or name a column the table lacks (one line each)."""
    notes = []
    for column, rng in t.scores.items():
        if column not in facts.scores.columns:
            notes.append(f"{column}: the clips table has no such column (the re-filter would fail)")
            continue
        v = facts.scores[column].to_numpy()
        v = v[~np.isnan(v)]
        if v.size == 0:
            notes.append(f"{column}: no clip has this score (its scorer was skipped); it drops nothing")
            continue
        lo, hi = float(v.min()), float(v.max())
        if rng.min is not None and rng.min > hi:
            notes.append(
                f"{column}.min = {rng.min:g} is above every score (range {lo:g} to {hi:g}): drops all"
            )
        if rng.max is not None and rng.max < lo:
            notes.append(
                f"{column}.max = {rng.max:g} is below every score (range {lo:g} to {hi:g}): drops all"
            )
    return notes


def wants_log_axis(values: np.ndarray) -> bool:
    """A positive score spread over more than two decades reads better on a log axis."""
    v = values[np.isfinite(values)]
    return bool(v.size) and float(v.min()) > 0 and float(v.max()) / float(v.min()) > 100
