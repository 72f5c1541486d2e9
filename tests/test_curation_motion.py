"""Motion score: ranks known motions, ≈0 for static shots, independent of resolution and fps.

Tolerance: the same motion at 2× resolution or at half the fps (twice the pixels per frame) scores within
10 % of the original. Farneback underestimates absolute speed on smooth textures by ~15-20 %, so the
tests check ranking and invariance, not the absolute value."""

from __future__ import annotations

import numpy as np
import pytest

from curation.config import CurationConfig
from curation.decode import SourceDecoder
from curation.motion import frames_motion, normalised_motion
from curation.probe import probe_source
from curation.synth import render_shot
from model.video_io import write_mp4


def test_normalisation_is_percent_of_diagonal_per_second():
    # 1 px per frame on a 3-4-5 frame (diagonal 5 px) at 10 fps = 10 px/s = 200 % of the diagonal per second.
    assert normalised_motion(1.0, (4, 3), 10.0, 1) == pytest.approx(200.0)
    assert normalised_motion(2.0, (4, 3), 10.0, 2) == pytest.approx(200.0)


def _encoded_clip(tmp_path, name, px_per_frame, fps, scale=1, seconds=2.0, codec_mvs=False):
    frames = render_shot(11, 96, 160, int(fps * seconds), px_per_frame, 0.6, scale=scale)
    path = write_mp4(frames, tmp_path / f"{name}.mp4", fps)
    probe = probe_source(str(path), path.stat().st_size, CurationConfig().probe, 0.5)
    cfg = CurationConfig.model_validate(
        {"scenes": {"min_clip_s": 1.0, "max_clip_s": 10.0}, "motion": {"codec_mvs": codec_mvs}}
    )
    clips = list(SourceDecoder(str(path), probe, cfg).clips())
    assert len(clips) == 1
    return clips[0]


def _encoded_motion(*args, **kwargs):
    return _encoded_clip(*args, **kwargs).motion_score


def test_known_motions_rank_and_static_is_zero(tmp_path):
    scores = [_encoded_motion(tmp_path, f"m{v}", v, 24.0) for v in (0, 1, 2, 4)]
    assert scores[0] < 0.5
    assert scores[1] > 5 * max(scores[0], 0.1)
    assert scores[0] < scores[1] < scores[2] < scores[3]


def test_same_motion_scores_the_same_at_twice_the_resolution_or_half_the_fps(tmp_path):
    base = _encoded_motion(tmp_path, "base", 2, 24.0)
    double_res = _encoded_motion(tmp_path, "res2", 2, 24.0, scale=2)
    half_fps = _encoded_motion(tmp_path, "fps12", 4, 12.0, seconds=3.0)
    assert double_res == pytest.approx(base, rel=0.10)
    assert half_fps == pytest.approx(base, rel=0.10)


def test_codec_motion_vectors_from_the_same_decode_rank_too(tmp_path):
    clips = [_encoded_clip(tmp_path, f"mv{v}", v, 24.0, codec_mvs=True) for v in (0, 1, 2, 4)]
    mv = [c.motion_mv_score for c in clips]
    assert mv[0] < 0.5
    assert mv[0] < mv[1] < mv[2] < mv[3]
    # Off by default: no vectors are exported and the column stays empty.
    assert _encoded_clip(tmp_path, "plain", 2, 24.0).motion_mv_score is None


def test_a_cut_hidden_in_a_clip_scores_a_high_peak():
    static_a = render_shot(1, 96, 160, 12, 0, 0.1)
    static_b = render_shot(2, 96, 160, 12, 0, 0.6)
    assert frames_motion(static_a, 24.0)[1] < 0.5
    _, disguised_peak = frames_motion(static_a + static_b, 24.0)
    _, slow_peak = frames_motion(render_shot(3, 96, 160, 24, 1, 0.3), 24.0)
    _, fast_peak = frames_motion(render_shot(3, 96, 160, 24, 4, 0.3), 24.0)
    assert np.isfinite(disguised_peak)
    # Above the fastest synthetic motion (4 px/frame, the whole frame width in 1.7 s) and far above a slow pan.
    assert disguised_peak > fast_peak
    assert disguised_peak > 3 * slow_peak
