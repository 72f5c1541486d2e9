"""The synthetic corpus: real mp4 files whose ground truth matches what is in them, deterministic."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from curation.synth import GROUND_TRUTH_FILE, VIDEOS_DIR, load_ground_truth, make_corpus
from model.video_io import read_frames


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_corpus_is_deterministic_and_matches_its_ground_truth(tmp_path):
    truth = make_corpus(tmp_path / "a", 3, seed=7)
    make_corpus(tmp_path / "b", 3, seed=7)
    make_corpus(tmp_path / "c", 3, seed=8)
    a, b, c = (_digests(tmp_path / x / VIDEOS_DIR) for x in "abc")
    assert a == b
    assert a != c
    assert json.loads((tmp_path / "a" / GROUND_TRUTH_FILE).read_text()) == json.loads(
        (tmp_path / "b" / GROUND_TRUTH_FILE).read_text()
    )
    assert load_ground_truth(tmp_path / "a").videos == truth.videos

    for video in truth.videos:
        frames = read_frames(tmp_path / "a" / VIDEOS_DIR / video.file)
        assert frames.shape == (video.num_frames, video.height, video.width, 3)
        assert [s.start for s in video.shots[1:]] == video.cuts
        assert video.shots[0].start == 0 and video.shots[-1].end == video.num_frames
        # A cut changes the picture far more than any frame-to-frame step inside a shot.
        steps = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
        inside = np.delete(steps, [cut - 1 for cut in video.cuts])
        for cut in video.cuts:
            assert steps[cut - 1] > 3 * inside.max()
        sidecar = (tmp_path / "a" / VIDEOS_DIR / video.file).with_suffix("." + video.caption_sidecar)
        assert video.caption in sidecar.read_text()

    assert set(truth.broken) == {
        "broken_empty.mp4",
        "broken_text.mp4",
        "broken_truncated.mp4",
        "broken_audio_only.mp4",
        "broken_too_short.mp4",
        "broken_absurd_size.mp4",
    }
    assert (tmp_path / "a" / VIDEOS_DIR / "broken_empty.mp4").stat().st_size == 0


def test_shapes_scene_moves_a_shape_by_its_known_motion_and_captions_it(tmp_path):
    from curation.synth import render_shape_shot

    frames, caption = render_shape_shot(3, 96, 160, 10, 4, 0.6)
    assert all(np.array_equal(np.roll(frames[0], 4 * i, axis=1), f) for i, f in enumerate(frames))
    assert len({tuple(c) for c in frames[0].reshape(-1, 3)}) > 1  # a shape on the background
    assert caption.endswith("moving right on blue")

    truth = make_corpus(tmp_path, 3, seed=7, scene="shapes", broken=False)
    assert any(video.cuts for video in truth.videos)
    for video in truth.videos:
        frames = read_frames(tmp_path / VIDEOS_DIR / video.file)
        assert frames.shape == (video.num_frames, video.height, video.width, 3)
        steps = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
        inside = np.delete(steps, [cut - 1 for cut in video.cuts])
        for cut in video.cuts:  # the background changes shade at a cut
            assert steps[cut - 1] > 3 * inside.max()
        assert video.caption.startswith("a ") and (" square " in video.caption or " disc " in video.caption)
        # One caption for the video is true of every shot: same motion (and shape and colours) throughout.
        assert len({shot.motion_px_per_frame for shot in video.shots}) == 1
        assert video.caption.split(" on ")[0].endswith(
            "still" if video.shots[0].motion_px_per_frame == 0 else "moving right"
        )


def test_grain_survives_the_encoder_as_a_camera_like_bitrate(tmp_path):
    """Grain is there to give the benchmark corpus a camera's bitrate and decode cost; at x264's default
    quality it was smoothed away (0.64 Mb/s at 720p on the H100 run), so grained videos are written at
    GRAIN_CRF, where the grain costs bits."""
    sizes = {}
    for grain in (0.0, 6.0):
        out = tmp_path / f"grain{grain}"
        make_corpus(out, 1, seed=3, width=320, height=180, broken=False, grain=grain, shots_per_video=(1, 1))
        sizes[grain] = (out / VIDEOS_DIR / "video_000.mp4").stat().st_size
    assert sizes[6.0] > 4 * sizes[0.0], sizes  # at crf 23 the grained file was the smaller of the two
