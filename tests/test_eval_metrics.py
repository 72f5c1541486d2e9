"""Metrics of generated videos on inputs whose answers are known (curation.video_eval)."""

from __future__ import annotations

import numpy as np
import pytest
from curation_tiny_models import save_tiny_aesthetic_mlp
from eval_tiny_models import CAPTIONS, colour_frames, save_trained_tiny_clip

from curation.clip_model import ClipModelSettings
from curation.video_eval import clip_metrics, frames


def _static(n: int = 8) -> np.ndarray:
    one = np.random.default_rng(0).integers(0, 256, size=(1, 48, 64, 3), dtype=np.uint8)
    return np.repeat(one, n, axis=0)


def _noise(n: int = 8) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(n, 48, 64, 3), dtype=np.uint8)


def test_a_static_video_has_no_flicker_and_no_motion():
    scores = frames.frame_metrics(_static(), fps=12.0)
    assert scores["flicker"] == 0.0
    assert scores["vbench_temporal_flickering"] == 1.0
    # Farneback's iterations leave a few hundredths of a percent on identical frames ("static ≈ 0").
    assert scores["motion"] == pytest.approx(0.0, abs=0.05)
    assert scores["blank_frames"] == 0.0 and scores["saturated_frames"] == 0.0


def test_a_video_of_noise_flickers_a_lot():
    scores = frames.frame_metrics(_noise(), fps=12.0)
    # |a - b| of two independent uniform bytes averages 85.
    assert scores["flicker"] == pytest.approx(85.0, abs=2.0)
    assert scores["vbench_temporal_flickering"] < 0.7


def test_a_moving_square_moves_and_a_single_frame_has_no_temporal_metrics():
    video = np.zeros((6, 64, 64, 3), dtype=np.uint8)
    for t in range(6):
        video[t, 20:40, 5 + 4 * t : 25 + 4 * t] = 255
    assert frames.frame_metrics(video, fps=12.0)["motion"] > 1.0
    single = frames.frame_metrics(video[:1], fps=12.0)
    assert "flicker" not in single and "motion" not in single


def test_sanity_counts_blank_saturated_and_nonfinite_frames():
    video = _noise(4).astype(np.float32)
    video[0] = 128.0  # flat grey
    video[1] = 255.0  # blown out (and flat)
    video[2, 0, 0, 0] = np.nan
    scores = frames.sanity(video)
    assert scores == {"blank_frames": 0.5, "saturated_frames": 0.25, "nonfinite_frames": 0.25}


def test_conditioning_match_is_one_for_the_image_itself():
    video = _noise(3)
    assert frames.conditioning_match(video, video[0]) == 1.0
    assert frames.conditioning_match(video, 255 - video[0]) < 0.5


def test_continuation_match_is_one_where_the_clip_ended_and_low_after_a_jump():
    clip = np.zeros((4, 48, 64, 3), dtype=np.uint8)
    clip[-1, :, 32:] = 255  # its last frame: black on the left, white on the right
    repeats = np.repeat(clip[-1:], 3, axis=0)  # a continuation that holds the last frame
    scores = frames.frame_metrics(repeats, fps=12.0, clip_end=clip[-1])
    assert scores["continuation_match"] == 1.0 and "conditioning_match" not in scores
    inverted = 255 - repeats  # jumps to the negative of where the clip ended
    assert frames.continuation_match(inverted, clip[-1]) == 0.0
    # Only the first generated frame counts: a video that starts where the clip ended and then changes.
    drifts = np.concatenate([repeats[:1], inverted[1:]])
    assert frames.continuation_match(drifts, clip[-1]) == 1.0
    # Half the pixels off by 255: 1 - 0.5.
    half = repeats.copy()
    half[0, :, :32] = 255
    assert frames.continuation_match(half, clip[-1]) == pytest.approx(0.5)


def test_without_weights_the_clip_metrics_say_they_are_skipped(tmp_path):
    reason = clip_metrics.availability(ClipModelSettings())
    assert reason is not None and "skipped" in reason and "eval.clip_checkpoint" in reason
    with pytest.raises(FileNotFoundError, match="eval.clip_checkpoint"):
        clip_metrics.availability(ClipModelSettings(clip_checkpoint=tmp_path / "missing.safetensors"))
    assert "VBench dimensions skipped" in clip_metrics.vbench_availability()


def test_a_frame_is_closer_to_its_own_caption_than_to_a_wrong_one(tmp_path):
    settings = save_trained_tiny_clip(tmp_path)
    assert clip_metrics.availability(settings) is None
    mlp = save_tiny_aesthetic_mlp(tmp_path / "mlp.pth", input_size=32)
    metrics = clip_metrics.ClipVideoMetrics(settings, aesthetic_mlp=mlp)
    (red, red_rgb), (blue, blue_rgb) = CAPTIONS.items()
    red_video = colour_frames(red_rgb, seed=5)
    assert metrics.similarity(red_video, red) > metrics.similarity(red_video, blue)
    blue_video = colour_frames(blue_rgb, seed=6)
    assert metrics.similarity(blue_video, blue) > metrics.similarity(blue_video, red)
    scores = metrics.score(red_video, red, image=red_video[0])
    assert set(scores) == {"clip_similarity", "consistency", "aesthetic", "conditioning_similarity"}
    assert scores["conditioning_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert 0.9 < scores["consistency"] <= 1.0 + 1e-6
    assert np.isfinite(scores["aesthetic"])


def test_consistency_of_identical_frames_is_one_and_drops_when_they_change():
    import torch

    same = torch.nn.functional.normalize(torch.ones(4, 8), dim=1)
    assert clip_metrics.consistency(same) == pytest.approx(1.0)
    varied = torch.nn.functional.normalize(
        torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1
    )
    assert clip_metrics.consistency(varied) < 0.9
