"""Metrics of a generated video that need no weights: each one number, named as it lands in MLflow.

- `flicker`: VBench's temporal-flickering statistic, the mean absolute difference of consecutive frames on
  the 0-255 scale (0 for a static video, ~85 for uniform noise). `vbench_temporal_flickering` is the same
  number as VBench reports it, `(255 - flicker) / 255` (1 is perfectly steady).
- `motion`: the curation motion scorer (`curation.motion.frames_motion`, Farneback flow as percent of the
  frame diagonal per second) on the generated frames; VBench's "dynamic degree" asks the same question.
- `blank_frames`, `saturated_frames`, `nonfinite_frames`: imaging sanity, each the fraction of frames that is
  flat (one colour), mostly clipped to black or white, or (float frames only) holds NaN/inf.
- `conditioning_match`: for image-to-video, 1 - mean |first frame - conditioning image| / 255.
- `continuation_match`: for a continuation, 1 - mean |first generated frame - last frame of the clip it
  continues| / 255 (the frames given are the generated ones only, after the clip): 1 when the video picks up
  exactly where the clip ended, lower the more it jumps (the clip's last frame inverted scores 0 on black and
  white content, ~0.5 on uniform noise).

A one-frame video has no temporal metrics: they are left out rather than made up.
"""

from __future__ import annotations

import numpy as np

from curation.motion import frames_motion

# A frame whose pixel standard deviation is below this (0-255 scale) shows one flat colour.
BLANK_STD = 2.0
# A frame is saturated when more than this share of its pixels sits at 0 or 255.
SATURATED_SHARE = 0.9


def _as_uint8(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3), got shape {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    return np.clip(np.nan_to_num(frames, nan=0.0), 0, 255).astype(np.uint8)


def flicker(frames: np.ndarray) -> float:
    """Mean absolute difference of consecutive frames, 0-255 (VBench's temporal flickering, before its
    `(255 - x) / 255`)."""
    video = _as_uint8(frames).astype(np.int16)
    if len(video) < 2:
        raise ValueError("flicker needs two or more frames")
    return float(np.abs(np.diff(video, axis=0)).mean())


def sanity(frames: np.ndarray) -> dict[str, float]:
    """Shares of blank, saturated and (float input) non-finite frames."""
    raw = np.asarray(frames)
    nonfinite = 0.0
    if raw.dtype.kind == "f":
        nonfinite = float((~np.isfinite(raw)).reshape(len(raw), -1).any(axis=1).mean())
    video = _as_uint8(raw).reshape(len(raw), -1)
    blank = video.astype(np.float32).std(axis=1) < BLANK_STD
    clipped = ((video == 0) | (video == 255)).mean(axis=1) > SATURATED_SHARE
    return {
        "blank_frames": float(blank.mean()),
        "saturated_frames": float(clipped.mean()),
        "nonfinite_frames": nonfinite,
    }


def conditioning_match(frames: np.ndarray, image: np.ndarray) -> float:
    """1 - mean |first frame - image| / 255, the image (H, W, 3) uint8 resized to the frame size first."""
    import cv2

    first = _as_uint8(frames)[0]
    image = np.asarray(image, dtype=np.uint8)
    if image.shape[:2] != first.shape[:2]:
        image = cv2.resize(image, (first.shape[1], first.shape[0]), interpolation=cv2.INTER_AREA)
    return 1.0 - float(np.abs(first.astype(np.int16) - image.astype(np.int16)).mean()) / 255.0


def continuation_match(frames: np.ndarray, clip_end: np.ndarray) -> float:
    """1 - mean |first generated frame - last frame of the continued clip| / 255 (`frames` are the generated
    frames only, after the clip; `clip_end` (H, W, 3) is resized to the frame size first)."""
    return conditioning_match(frames, clip_end)


def frame_metrics(
    frames: np.ndarray,
    fps: float,
    image: np.ndarray | None = None,
    clip_end: np.ndarray | None = None,
) -> dict[str, float]:
    """Every weight-free metric of one video (see the module docstring): `image` is the image it started from
    (image-to-video), `clip_end` the last frame of the clip it continues (then `frames` are the new ones)."""
    video = _as_uint8(frames)
    out = sanity(frames)
    if len(video) >= 2:
        out["flicker"] = flicker(video)
        out["vbench_temporal_flickering"] = (255.0 - out["flicker"]) / 255.0
        out["motion"] = frames_motion(list(video), fps)[0]
    if image is not None:
        out["conditioning_match"] = conditioning_match(video, image)
    if clip_end is not None:
        out["continuation_match"] = continuation_match(video, clip_end)
    return out
