"""Motion score: OpenCV Farneback optical flow on sampled frame pairs, normalised to be independent of
resolution and frame rate.

A pair is two grey frames `gap` frames apart, at the analysis size (short side `MotionConfig.short_side`,
never upscaled). Its score is the mean flow magnitude as a fraction of the frame diagonal, per second of
video, ×100: "percent of the frame diagonal travelled per second". The same scene filmed at twice the
resolution moves twice as many pixels over a twice-as-long diagonal; filmed at another frame rate it moves
the same distance per second. A static shot scores ≈ 0; a cut hidden inside a clip scores very high, since
nothing matches across it. A clip's score is the mean over the pairs that lie inside it.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# Farneback settings tuned for small analysis frames (~100 px): a 3-level pyramid follows motions of a
# few percent of the frame per frame; a 15 px window averages out codec noise on flat regions; a third
# iteration changes the mean by <0.1 % on the synthetic corpus and costs 25 % more.
_FARNEBACK = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 2,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}


def analysis_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) at which flow is computed: short side `short_side` unless the frame is smaller."""
    scale = min(1.0, short_side / min(width, height))
    return max(8, int(round(width * scale))), max(8, int(round(height * scale)))


def to_analysis_gray(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Shrink a full-size grey (luma) frame to the analysis size.

    Area averaging (no aliasing, so grain does not turn into flow), done as exact halvings first: OpenCV
    averages an exact 2× step ~30× faster than an arbitrary ratio, which matters at full HD and above."""
    while gray.shape[1] >= 2 * size[0] and gray.shape[0] >= 2 * size[1]:
        gray = cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if (gray.shape[1], gray.shape[0]) == size:
        return np.ascontiguousarray(gray)
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def mean_flow_px(first: np.ndarray, second: np.ndarray) -> float:
    """Mean Farneback flow magnitude between two grey frames of the same size, in their pixels."""
    flow = cv2.calcOpticalFlowFarneback(first, second, None, **_FARNEBACK)
    return float(np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2).mean())


def normalised_motion(mean_px: float, size: tuple[int, int], fps: float, gap_frames: int) -> float:
    """Flow of one pair as percent of the frame diagonal per second."""
    diagonal = math.hypot(size[0], size[1])
    return 100.0 * mean_px / diagonal * fps / gap_frames


def pair_motion(first: np.ndarray, second: np.ndarray, fps: float, gap_frames: int) -> float:
    """Normalised motion between two analysis-size grey frames taken `gap_frames` apart."""
    size = (first.shape[1], first.shape[0])
    return normalised_motion(mean_flow_px(first, second), size, fps, gap_frames)


def codec_mv_motion(frame, fps: float) -> float | None:
    """Motion from the codec's motion vectors of one decoded frame (exported with `flags2=+export_mvs`):
    block displacements weighted by block area, over the frame, in the same unit as `pair_motion`.

    None for frames without vectors (intra frames say nothing about motion). A vector points to its
    reference frame, which with B-frames can be a few frames away, so the scale depends on the encoder's
    GOP settings: compare these scores within one source or one encoder setting, as Cosmos-Curate does."""
    side = frame.side_data.get("MOTION_VECTORS")
    if side is None:
        return None
    mv = side.to_ndarray()
    if mv.size == 0:
        return 0.0
    length = np.hypot(mv["motion_x"], mv["motion_y"]) / np.maximum(mv["motion_scale"], 1)
    area = mv["w"].astype(np.float64) * mv["h"]
    mean_px = float((length * area).sum() / (frame.width * frame.height))
    return normalised_motion(mean_px, (frame.width, frame.height), fps, 1)


def pair_gap_frames(fps: float, pair_gap_s: float) -> int:
    return max(1, int(round(fps * pair_gap_s)))


def clip_mv_motion(frames: dict[int, float], start: int, end: int) -> float | None:
    """Mean codec-vector motion of the frames in [start, end) that have vectors."""
    inside = [v for k, v in frames.items() if start <= k < end]
    return float(np.mean(inside)) if inside else None


def clip_motion(
    pairs: list[tuple[int, int, float]], start: int, end: int
) -> tuple[float | None, float | None]:
    """(mean, peak) score of the pairs (first frame, second frame, score) lying inside [start, end).

    The mean is the clip's motion; the peak exposes a cut the detectors missed (one pair across it scores
    far above any real motion) even when the mean over many pairs dilutes it."""
    inside = [score for a, b, score in pairs if start <= a and b < end]
    return (float(np.mean(inside)), float(np.max(inside))) if inside else (None, None)


def frames_motion(
    frames: list[np.ndarray], fps: float, short_side: int = 96, gap_frames: int = 1
) -> tuple[float, float]:
    """(mean, peak) motion of a list of RGB frames (all pairs `gap_frames` apart). Used by the benchmark's
    separate-decode baseline and by tests; the pipeline scores pairs as it decodes."""
    if len(frames) <= gap_frames:
        raise ValueError(f"need more than {gap_frames} frames, got {len(frames)}")
    size = analysis_size(frames[0].shape[1], frames[0].shape[0], short_side)
    grays = [to_analysis_gray(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), size) for f in frames]
    scores = [
        pair_motion(grays[i], grays[i + gap_frames], fps, gap_frames) for i in range(len(grays) - gap_frames)
    ]
    return float(np.mean(scores)), float(np.max(scores))
