"""Thresholds: validated YAML, pure-pandas filtering, nulls never filter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curation.thresholds import (
    ScoreRange,
    Thresholds,
    apply_thresholds,
    default_thresholds,
    dump_thresholds,
    load_thresholds,
    thresholds_hash,
    write_thresholds,
)


def _clips() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "clip_id": ["c0", "c1", "c2", "c3", "c4"],
            "motion_score": [0.1, 2.0, 50.0, np.nan, 5.0],
            "aesthetic_score": [5.0, 4.0, 6.0, 5.5, None],
            "caption": ["a fine caption here", "another fine caption", None, "  ", "ok caption text here"],
            "caption_issues": [np.array([]), np.array(["too_long"]), np.array(["empty"]), ["empty"], []],
        }
    )


def _write(tmp_path, text: str):
    path = tmp_path / "thresholds.yaml"
    path.write_text(text)
    return path


def test_load_and_apply(tmp_path):
    path = _write(
        tmp_path,
        "scores:\n  motion_score: {min: 0.5, max: 30}\n  aesthetic_score: {min: 4.5}\n"
        "caption:\n  require_caption: true\n  max_caption_issues: 0\n",
    )
    t = load_thresholds(path)
    out = apply_thresholds(_clips(), t)
    assert list(out["kept"]) == [False, False, False, False, True]
    assert [list(f) for f in out["filtered_by"]] == [
        ["motion_score.min"],
        ["aesthetic_score.min", "caption.issues"],
        ["motion_score.max", "caption.required", "caption.issues"],
        ["caption.required", "caption.issues"],  # null motion score: not judged by motion
        [],  # null aesthetic score: not judged by aesthetics
    ]
    assert out["kept"].dtype == bool
    assert "kept" not in _clips().columns  # the input is not modified


def test_different_thresholds_change_kept_without_touching_video(tmp_path, monkeypatch):
    import av

    def no_decoding(*args, **kwargs):
        raise AssertionError("filtering must not open any video")

    monkeypatch.setattr(av, "open", no_decoding)
    clips = _clips()
    strict = apply_thresholds(
        clips, load_thresholds(_write(tmp_path, "scores:\n  aesthetic_score: {min: 5.2}\n"))
    )
    loose = Thresholds(scores={"aesthetic_score": ScoreRange(min=3)})
    loose.caption.max_caption_issues = None
    loose.caption.require_caption = False
    relaxed = apply_thresholds(clips, loose)
    assert list(strict["kept"]) != list(relaxed["kept"])
    assert relaxed["kept"].all()
    ignored = Thresholds(caption={"ignore_issues": ["too_long"], "require_caption": False})
    assert list(apply_thresholds(clips, ignored)["kept"]) == [True, True, False, False, True]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "scores:\n  motion_score: {minimum: 1}\n",
            r"thresholds.yaml: scores.motion_score.minimum: unknown key",
        ),
        (
            "scores:\n  motion_score: {min: high}\n",
            r"thresholds.yaml: scores.motion_score.min: Input should be",
        ),
        ("scores:\n  motion_score: {min: 5, max: 1}\n", r"scores.motion_score: min \(5.0\) is larger"),
        ("caption:\n  max_caption_issues: -1\n", r"caption.max_caption_issues: Input should be greater"),
        ("captions: {}\n", r"thresholds.yaml: captions: unknown key"),
        ("scores: [1, 2\n", r"thresholds.yaml: invalid YAML at line"),
        ("- 1\n", r"expected a mapping"),
    ],
)
def test_bad_files_are_one_line_errors_naming_key_and_file(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as err:
        load_thresholds(_write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_missing_file_and_unknown_score_column(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_thresholds(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="'aesthetics_score', which the clips table lacks"):
        apply_thresholds(_clips(), Thresholds(scores={"aesthetics_score": ScoreRange(min=1)}))


def test_defaults_roundtrip_and_hash(tmp_path):
    t = default_thresholds()
    path = write_thresholds(tmp_path / "t.yaml", t)
    assert load_thresholds(path) == t
    assert dump_thresholds(load_thresholds(path)) == dump_thresholds(t)
    assert thresholds_hash(t) == thresholds_hash(load_thresholds(path))
    other = t.model_copy(update={"scores": {"aesthetic_score": ScoreRange(min=5.0)}})
    assert thresholds_hash(other) != thresholds_hash(t)
    assert t.filter_names() == ["aesthetic_score.min", "caption.required", "caption.issues"]


def test_clips_without_caption_columns():
    clips = pd.DataFrame({"clip_id": ["a"], "motion_score": [1.0]})
    out = apply_thresholds(clips, Thresholds(caption={"require_caption": False}))
    assert out["kept"].tolist() == [True]
    out = apply_thresholds(clips, Thresholds())
    assert out["filtered_by"].tolist() == [["caption.required"]]
