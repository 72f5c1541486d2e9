"""The dashboard's threshold math against the re-filter's own rule: same kept clips, same per-filter drops
(also "dropped by this filter alone"), per source and bucket sums that add up, and clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curation.report import build_report
from curation.tables import CLIPS_FILE, SOURCES_FILE, clips_table, sources_table, write_table_atomic
from curation.thresholds import CaptionRules, ScoreRange, Thresholds, apply_thresholds
from orchestration.dashboard.keep_math import (
    diff,
    keep_curve,
    load_clip_facts,
    range_warnings,
    require_curation_folder,
    summarize,
)

CURRENT = Thresholds(scores={"aesthetic_score": ScoreRange(min=4.5)})
MOVED = Thresholds(
    scores={"aesthetic_score": ScoreRange(min=4.8, max=6.0), "motion_score": ScoreRange(min=0.4)},
    caption=CaptionRules(max_caption_issues=0, ignore_issues=["too_long"]),
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("keep_math")
    rng = np.random.default_rng(1)
    n = 400
    sids = [f"{i:032x}" for i in range(7)]
    src = rng.integers(0, len(sids), n)
    start = rng.uniform(0, 50, n)
    motion = rng.lognormal(0, 1, n)
    motion[::17] = np.nan  # a skipped motion score never drops a clip
    issues = [[], ["too_long"], ["repetitive"], ["too_long", "empty_words"]]
    clips = pd.DataFrame(
        {
            "clip_id": [f"{sids[s][:16]}_{i:07d}_{i + 9:07d}" for i, s in enumerate(src)],
            "source_id": [sids[s] for s in src],
            "start_frame": np.arange(n),
            "end_frame": np.arange(n) + 9,
            "start_s": start,
            "end_s": start + rng.uniform(1, 8, n),
            "fps": 24.0,
            "width": rng.choice([320, 640], n),
            "height": 240,
            "motion_score": motion,
            "aesthetic_score": rng.normal(5, 0.7, n),
            "caption": [None if i % 11 == 0 else "a cat" for i in range(n)],
            "caption_issues": [issues[i % 4] for i in range(n)],
        }
    )
    write_table_atomic(clips_table(apply_thresholds(clips, CURRENT)), out / CLIPS_FILE)
    rows = [{"source_id": s, "uri": f"/v/{s}.mp4", "bytes": 1, "status": "ok"} for s in sids]
    write_table_atomic(sources_table(rows), out / SOURCES_FILE)
    return out, clips


def test_summary_matches_the_refilter_rule(folder):
    out, clips = folder
    facts = load_clip_facts(out)
    summary = summarize(facts, MOVED)
    applied = apply_thresholds(clips, MOVED)
    report = build_report(pd.DataFrame(columns=["status", "reason"]), applied, MOVED)
    assert summary.kept.tolist() == applied["kept"].tolist()
    assert summary.kept_clips == report["clips"]["kept"]
    assert summary.kept_hours == pytest.approx(report["clips"]["hours_kept"], abs=1e-6)
    for row in summary.per_filter.itertuples():
        assert row.removed == report["filters"][row.filter]["dropped"]
        assert row.only_this == report["filters"][row.filter]["dropped_alone"]
    assert summary.per_source["kept"].sum() == summary.per_bucket["kept"].sum() == summary.kept_clips
    assert summary.per_bucket["bucket"].str.fullmatch(r"\d+x\d+_t\d+").all()
    before = summarize(facts, CURRENT)
    change = diff(summary, before)
    assert (
        change["kept_clips"]
        == summary.kept_clips - before.kept_clips
        == change["newly_kept"] - change["newly_dropped"]
    )


def test_keep_curve_is_monotone_and_agrees_with_the_summary(folder):
    out, _ = folder
    facts = load_clip_facts(out)
    grid = np.linspace(3, 7, 41)
    curve = keep_curve(facts, MOVED, "aesthetic_score", grid)
    assert (np.diff(curve["clips"]) <= 1e-12).all() and (np.diff(curve["hours"]) <= 1e-12).all()
    at = MOVED.model_copy(deep=True)
    at.scores["aesthetic_score"] = ScoreRange(min=float(grid[18]), max=6.0)
    assert curve["clips"][18] == pytest.approx(summarize(facts, at).kept_clips / len(facts))


def test_bad_input_is_one_clear_line(folder, tmp_path):
    out, _ = folder
    with pytest.raises(FileNotFoundError, match="not a curation output folder"):
        require_curation_folder(tmp_path)
    facts = load_clip_facts(out)
    lacking = Thresholds(scores={"caption_score": ScoreRange(min=1)})
    with pytest.raises(ValueError, match="lacks"):
        summarize(facts, lacking)
    far = Thresholds(scores={"aesthetic_score": ScoreRange(min=99)})
    assert any("above every score" in w for w in range_warnings(facts, far))
    assert any("no such column" in w for w in range_warnings(facts, lacking))
