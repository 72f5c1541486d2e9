"""The demo's learning figures on videos whose answers are known: rendered shapes clips, noise, and a video of
the wrong colours."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from curation.synth import render_shape_shot
from orchestration.demo_check import clip_figures, frame_stats, prompt_following, showcase, write_strip


def _shot(seed: int, hue: float, motion: int = 2) -> tuple[str, np.ndarray]:
    frames, caption = render_shape_shot(seed, 64, 64, 12, motion, hue, disc=True)
    return caption, np.stack(frames)


def test_frame_stats_tell_a_moving_shape_from_noise():
    _, clip = _shot(1, 0.6)
    noise = np.random.default_rng(0).integers(0, 256, clip.shape, dtype=np.uint8)
    shape, random = frame_stats(clip), frame_stats(noise)
    # A 21-pixel disc on 64x64 frames (~8% of the pixels, a little less where antialiased).
    assert 0.05 < shape["shape"] < 0.09 and random["shape"] > 0.4
    assert set(frame_stats(clip[:1])) == {"mean", "std", "shape"}


def test_clip_figures_add_the_evaluations_temporal_metrics():
    # The frame-to-frame change is the evaluation's `flicker` (curation.video_eval.frames), with its motion.
    clips = [_shot(1, 0.6), _shot(2, 0.3)]
    noise = [("noise", np.random.default_rng(0).integers(0, 256, clips[0][1].shape, dtype=np.uint8))]
    moving, random = clip_figures(clips, fps=8.0), clip_figures(noise, fps=8.0)
    assert moving["flicker"] < 10 < 70 < random["flicker"]  # the disc moves 2 px a frame
    assert moving["motion"] > 0 and moving["blank_frames"] == 0.0
    assert moving["shape"] == np.mean([frame_stats(frames)["shape"] for _, frames in clips])


def test_prompt_following_is_near_its_captions_clips_only():
    clips = [_shot(1, 0.6), _shot(2, 0.6), _shot(3, 0.1), _shot(4, 0.35)]
    prompt, own = clips[0]
    follows = prompt_following(own, prompt, clips)
    assert follows["same_caption"] < 5 < 20 < follows["other_captions"]
    grey = np.full_like(own, 128)
    ignores = prompt_following(grey, prompt, clips)
    assert ignores["same_caption"] > 20
    assert prompt_following(own, "a caption no clip has", clips)["same_caption"] is None


def test_showcase_takes_the_captioned_clip_whose_shape_shows_most(tmp_path):
    blank = ("a blank", np.zeros((4, 64, 64, 3), np.uint8))
    uncaptioned = ("", _shot(5, 0.2)[1])
    shown = _shot(6, 0.8)
    assert showcase([blank, uncaptioned, shown]) is shown
    assert showcase([uncaptioned]) is uncaptioned

    png = write_strip([shown[1], blank[1][:, :32, :32]], tmp_path / "strip.png", frames=3, scale=2)
    image = cv2.imread(str(png))
    assert image.shape == ((64 + 4 + 64) * 2, 3 * 64 * 2, 3)


@pytest.mark.parametrize("frames", [1, 6])
def test_write_strip_picks_frames_across_time(tmp_path, frames):
    video = np.stack([np.full((8, 8, 3), 20 * i, np.uint8) for i in range(10)])
    image = write_strip([video], tmp_path / "one.png", frames=frames, scale=1)
    row = cv2.imread(str(image))[0, ::8, 0]
    assert list(row) == [20 * i for i in np.linspace(0, 9, frames).round().astype(int)]
