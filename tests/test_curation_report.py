"""Report: counts and hours in/out, per filter, per rejection reason, skipped scorers; table and plot."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from curation.report import build_report, finish_report, format_report, read_report
from curation.thresholds import ScoreRange, Thresholds, apply_thresholds


def _sources() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_id": ["s1", "s2", "s3", "s4", "s5"],
            "uri": ["a.mp4", "b.mp4", "c.txt", "d.mp4", "e.mp4"],
            "status": ["ok", "ok", "rejected", "rejected", "failed"],
            "reason": ["", "", "not a video", "not a video", "worker crashed 3 times"],
            "duration_s": [3600.0, 1800.0, None, None, 720.0],
        }
    )


def _clips() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "clip_id": [f"c{i}" for i in range(6)],
            "source_id": ["s1"] * 4 + ["s2"] * 2,
            "start_s": [0.0, 10.0, 20.0, 30.0, 0.0, 36.0],
            "end_s": [10.0, 20.0, 30.0, 66.0, 36.0, 72.0],
            "motion_score": [0.1, 3.0, 5.0, 8.0, np.nan, 0.2],
            "aesthetic_score": [np.nan] * 6,  # scorer skipped
            "caption": [
                "a good caption here",
                "a good caption here",
                None,
                "fine caption text",
                "x y z",
                "ok a b",
            ],
            "caption_issues": [[], [], ["empty"], [], [], ["refusal"]],
        }
    )


THRESHOLDS = Thresholds(scores={"motion_score": ScoreRange(min=0.5), "aesthetic_score": ScoreRange(min=4.5)})


def test_counts_hours_filters_and_rejections():
    report = build_report(_sources(), _clips(), THRESHOLDS)
    assert report["sources"] == {
        "total": 5,
        "ok": 2,
        "rejected": 2,
        "failed": 1,
        "hours_in": 1.7,
        "hours_ok": 1.5,
        "hours_trimmed": None,  # sources of a folder curated before the lost scene time was recorded
        "hours_short_pieces": None,
    }
    assert report["rejections"] == [
        {"status": "rejected", "reason": "not a video", "sources": 2, "hours": 0.0},
        {"status": "failed", "reason": "worker crashed 3 times", "sources": 1, "hours": 0.2},
    ]
    # kept: c1 (3.0), c3 (8.0), c4 (null motion: not judged) → 10 + 36 + 36 s
    assert report["clips"]["total"] == 6 and report["clips"]["kept"] == 3 and report["clips"]["filtered"] == 3
    assert report["clips"]["hours_kept"] == pytest.approx(82 / 3600, abs=1e-6)
    assert report["clips"]["hours_total"] == pytest.approx(138 / 3600, abs=1e-6)
    f = report["filters"]
    assert f["motion_score.min"] == {
        "dropped": 2,
        "hours": pytest.approx(46 / 3600, abs=1e-6),
        "dropped_alone": 1,
        "not_judged": 1,
    }
    assert f["aesthetic_score.min"]["dropped"] == 0 and f["aesthetic_score.min"]["not_judged"] == 6
    assert f["caption.required"]["dropped"] == 1 and f["caption.issues"]["dropped"] == 2
    assert report["skipped_scorers"] == ["aesthetic_score"]
    assert report["scores"]["aesthetic_score"]["status"] == "skipped"
    assert report["scores"]["motion_score"]["scored"] == 5 and report["scores"]["motion_score"]["max"] == 8.0
    assert report["caption_issues"] == {"empty": 1, "refusal": 1}
    # Same result whether the clips were already filtered or not.
    assert build_report(_sources(), apply_thresholds(_clips(), THRESHOLDS), THRESHOLDS) == report


def test_written_report_table_and_plot(tmp_path):
    report = finish_report(tmp_path, _sources(), _clips(), THRESHOLDS)
    assert read_report(tmp_path) == json.loads(json.dumps(report))
    png = (tmp_path / "scores.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 2000
    text = format_report(report)
    for needle in (
        "sources in",
        "clips kept",
        "not a video",
        "motion_score.min",
        "aesthetic_score",
        "skipped",
    ):
        assert needle in text
    assert "\x1b[" not in text  # plain text, no terminal colour codes


def test_empty_inputs_give_a_valid_report(tmp_path):
    sources = _sources().iloc[2:3]
    clips = _clips().iloc[0:0]
    report = finish_report(tmp_path, sources, clips, THRESHOLDS)
    assert report["clips"]["total"] == 0 and report["sources"]["rejected"] == 1
    assert "clips" in format_report(report)
    with pytest.raises(FileNotFoundError, match="no curation report"):
        read_report(tmp_path / "elsewhere")
