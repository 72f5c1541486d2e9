"""Scene cutting: cuts within ±2 frames of the synthetic ground truth with both detectors, the clip rule
(trim, min/max length, windows), and bounded memory on a long scene."""

from __future__ import annotations

import pytest

from curation.config import CurationConfig, SceneConfig
from curation.decode import SourceDecoder
from curation.probe import probe_source
from curation.scenes import ClipPlan
from curation.synth import VIDEOS_DIR, make_corpus, render_shot
from model.video_io import write_mp4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return out, make_corpus(out, 6, seed=1, broken=False)


def _decode(path, cfg):
    probe = probe_source(str(path), path.stat().st_size, cfg.probe, cfg.min_duration_s)
    decoder = SourceDecoder(str(path), probe, cfg)
    clips = list(decoder.clips())
    return decoder, clips


@pytest.mark.parametrize("kind", ["content", "adaptive"])
def test_cuts_match_ground_truth_within_two_frames(corpus, kind):
    out, truth = corpus
    cfg = CurationConfig.model_validate({"scenes": {"min_clip_s": 1.0, "detectors": [{"kind": kind}]}})
    assert sum(len(v.cuts) for v in truth.videos) >= 4
    for video in truth.videos:
        decoder, clips = _decode(out / VIDEOS_DIR / video.file, cfg)
        assert len(decoder.cuts) == len(video.cuts), (video.file, decoder.cuts, video.cuts)
        for found, true in zip(decoder.cuts, video.cuts, strict=True):
            assert abs(found - true) <= 2, (video.file, decoder.cuts, video.cuts)
        # No clip spans a cut, and clips lie inside the video.
        for clip in clips:
            assert 0 <= clip.start_frame < clip.end_frame <= video.num_frames
            assert not any(clip.start_frame < c < clip.end_frame for c in video.cuts)


def test_clip_rule_trims_at_cuts_and_windows_long_scenes():
    plan = ClipPlan.for_fps(SceneConfig(min_clip_s=1.0, max_clip_s=2.0, trim_s=0.25), 8.0)
    assert (plan.trim, plan.min_len, plan.max_len) == (2, 8, 16)
    # First scene: no trim at the video start, trimmed before the cut at 40; windows of 16, tail 6 < 8 dropped.
    assert plan.clips(0, 40, video_end=False) == [(0, 16), (16, 32)]
    # A scene between two cuts is trimmed on both sides; the tail 10 >= 8 is kept.
    assert plan.clips(40, 68, video_end=False) == [(42, 58), (58, 66)]
    # The last scene is not trimmed at the end of the video.
    assert plan.clips(68, 80, video_end=True) == [(70, 80)]
    assert plan.clips(80, 85, video_end=True) == []  # too short


@pytest.mark.parametrize(
    ("cuts", "lost"),
    [([], (0, 6)), ([5], (4, 3)), ([13, 14, 40], (9, 6))],  # (trimmed, in pieces < min_clip_s)
)
def test_lost_frames_and_clips_cover_the_video(cuts, lost):
    plan = ClipPlan.for_fps(SceneConfig(min_clip_s=1.0, max_clip_s=2.0, trim_s=0.25), 8.0)
    n = 70
    bounds = [0, *cuts, n]
    spans = [c for a, b in zip(bounds, bounds[1:], strict=False) for c in plan.clips(a, b, b == n)]
    assert plan.lost_frames(cuts, n) == lost
    assert sum(b - a for a, b in spans) + sum(lost) == n


def test_long_scene_streams_in_windows_with_bounded_memory(tmp_path):
    fps, seconds = 24.0, 24
    path = write_mp4(render_shot(5, 96, 160, int(fps * seconds), 1, 0.2), tmp_path / "long.mp4", fps)
    cfg = CurationConfig.model_validate({"scenes": {"min_clip_s": 1.0, "max_clip_s": 2.0}})
    decoder, clips = _decode(path, cfg)
    assert decoder.cuts == []
    assert [(c.start_frame, c.end_frame) for c in clips] == [(i * 48, i * 48 + 48) for i in range(12)]
    # Held at most one window plus the detector's look-ahead, not the whole 576-frame video.
    assert decoder.peak_buffered_frames < 48 + 40
    assert all(c.frames.shape == (4, 96, 160, 3) for c in clips)
