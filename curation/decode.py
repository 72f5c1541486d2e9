"""Decode once: one sequential pass over a source feeds cut detection, motion and the scorers' frames.

For every decoded frame the luma/chroma planes are shrunk straight to the detector's small BGR frame (no
full-size RGB conversion, which costs as much as the decode itself). Only at sampled frames is more work
done: a grey frame at the motion analysis size (then flow against the frame `gap` later) and an RGB frame
at the scorers' short side. Clips are yielded as soon as their span is final, and every buffer is cut back
to the earliest frame a future clip can start at, so memory does not grow with the length of the video.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import av
import cv2
import numpy as np

from curation.config import CurationConfig
from curation.motion import (
    analysis_size,
    clip_motion,
    clip_mv_motion,
    codec_mv_motion,
    pair_gap_frames,
    pair_motion,
    to_analysis_gray,
)
from curation.probe import Probe
from curation.scenes import CutTracker

_PLANAR_420 = ("yuv420p", "yuvj420p")


class DecodeError(Exception):
    """The stream stopped decoding part-way (truncated or corrupt); the message is the one-line reason."""


@dataclass
class DecodedClip:
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    frames: np.ndarray  # (K, h, w, 3) uint8 RGB at the scorers' short side, display orientation
    motion_score: float | None
    motion_peak: float | None  # highest pair score: a missed cut shows here
    motion_mv_score: float | None = None  # from the codec's motion vectors, when `motion.codec_mvs` is on


@dataclass
class _Buffers:
    """Per-frame facts kept only from the current horizon on."""

    times: dict[int, float] = field(default_factory=dict)
    # Decoded frames at the sample points, converted only if a clip picks them (most are never picked).
    samples: dict[int, av.VideoFrame] = field(default_factory=dict)
    pending_gray: dict[int, np.ndarray] = field(default_factory=dict)  # first frames of open pairs
    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    mv: dict[int, float] = field(default_factory=dict)  # frame -> codec motion-vector score
    horizon: int = 0

    def drop_before(self, frame: int) -> None:
        if frame <= self.horizon:
            return
        self.horizon = frame
        for d in (self.times, self.samples, self.pending_gray, self.mv):
            for k in [k for k in d if k < frame]:
                del d[k]
        self.pairs = [p for p in self.pairs if p[0] >= frame]


def _plane(frame: av.VideoFrame, index: int, width: int, height: int) -> np.ndarray:
    plane = frame.planes[index]
    arr = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return arr[:height, :width]


def _sample(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour shrink of a plane to `size` (w, h) by index sampling (no filtering pass)."""
    h, w = plane.shape
    rows = (np.arange(size[1]) * h) // size[1]
    cols = (np.arange(size[0]) * w) // size[0]
    return plane[rows[:, None], cols[None, :]]


def small_bgr(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """The frame shrunk to `size` (w, h) as BGR, reading 4:2:0 planes directly when it can.

    Point sampling, not area averaging: this runs on every frame, the detectors compare mean changes over
    the whole frame (which sampling preserves), and it costs a few microseconds instead of a filtering
    pass over the full-size frame."""
    if frame.format.name in _PLANAR_420:
        w, h = frame.width, frame.height
        y = _sample(_plane(frame, 0, w, h), size)
        u = _sample(_plane(frame, 1, (w + 1) // 2, (h + 1) // 2), size)
        v = _sample(_plane(frame, 2, (w + 1) // 2, (h + 1) // 2), size)
        return cv2.cvtColor(cv2.merge((y, u, v)), cv2.COLOR_YUV2BGR)
    return frame.to_ndarray(width=size[0], height=size[1], format="bgr24", interpolation="FAST_BILINEAR")


def luma(frame: av.VideoFrame) -> np.ndarray:
    """Full-size grey frame (the Y plane when there is one)."""
    if frame.format.name in _PLANAR_420:
        return _plane(frame, 0, frame.width, frame.height)
    return frame.to_ndarray(format="gray")


def _scaled(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side `short_side` (never upscaled), both even."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _rotate(img: np.ndarray, rotation: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(img, k=(rotation // 90) % 4)) if rotation % 360 else img


class SourceDecoder:
    """Decodes one source once and yields `DecodedClip`s; afterwards `cuts` and `frames_decoded` are set."""

    def __init__(self, handle: str | BinaryIO, probe: Probe, cfg: CurationConfig):
        if probe.fps is None:
            raise ValueError("cannot decode a source without a frame rate")
        self.handle = handle
        self.probe = probe
        self.cfg = cfg
        self.fps = probe.fps
        self.cuts: list[int] = []
        self.frames_decoded = 0
        self.peak_buffered_frames = 0  # most frames whose facts were held at once (memory bound check)
        plan_min = max(1, math.ceil(cfg.scenes.min_clip_s * self.fps - 1e-6))
        # Sample often enough that even the shortest clip gets its K scorer frames and several flow pairs.
        self.sample_every = max(1, min(int(round(self.fps / 2.0)), plan_min // cfg.frames_per_clip))
        self.pair_every = max(1, min(int(round(self.fps / cfg.motion.pairs_per_s)), plan_min // 2))
        self.gap = pair_gap_frames(self.fps, cfg.motion.pair_gap_s)

    def clips(self) -> Iterator[DecodedClip]:
        cfg = self.cfg
        tracker = CutTracker(cfg.scenes, self.fps)
        buf = _Buffers()
        index = -1
        with av.open(self.handle, mode="r") as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = cfg.decode_threads
            if cfg.decode_threads != 1:
                stream.thread_type = "AUTO"
            if cfg.motion.codec_mvs:
                stream.codec_context.options = {"flags2": "+export_mvs"}
            w, h = stream.codec_context.width, stream.codec_context.height
            det_w = min(cfg.scenes.detect_width, w)
            det_size = (det_w, max(2, int(round(h * det_w / w))))
            motion_size = analysis_size(w, h, cfg.motion.short_side)
            rotation = self.probe.rotation
            # The scorer frame is resized before it is rotated: swap the target for quarter turns.
            sw, sh = _scaled(self.probe.width or w, self.probe.height or h, cfg.scorer_short_side)
            self._scorer_size = (sh, sw) if rotation in (90, 270) else (sw, sh)
            try:
                for frame in container.decode(stream):
                    index += 1
                    t = float(frame.time) if frame.time is not None else index / self.fps
                    buf.times[index] = t
                    if index % self.sample_every == 0:
                        buf.samples[index] = frame
                    if cfg.motion.codec_mvs:
                        mv = codec_mv_motion(frame, self.fps)
                        if mv is not None:
                            buf.mv[index] = mv
                    first = index - self.gap
                    if first in buf.pending_gray:
                        gray = to_analysis_gray(luma(frame), motion_size)
                        score = pair_motion(buf.pending_gray.pop(first), gray, self.fps, self.gap)
                        buf.pairs.append((first, index, score))
                    if index % self.pair_every == 0:
                        buf.pending_gray[index] = to_analysis_gray(luma(frame), motion_size)
                    for span in tracker.push(index, small_bgr(frame, det_size)):
                        yield self._clip(span, buf, index)
                    self.peak_buffered_frames = max(self.peak_buffered_frames, len(buf.times))
                    buf.drop_before(tracker.horizon())
            except av.error.FFmpegError as err:
                raise DecodeError(f"decode failed at frame {index + 1}: {err.strerror or err}") from None
        self.frames_decoded = index + 1
        expected = self.probe.num_frames
        if expected and self.frames_decoded < 0.9 * expected:
            raise DecodeError(f"truncated: decoded {self.frames_decoded} of {expected} frames")
        for span in tracker.finish(self.frames_decoded):
            yield self._clip(span, buf, index)
        self.cuts = tracker.cuts

    def _scorer_frame(self, frame: av.VideoFrame) -> np.ndarray:
        w, h = self._scorer_size
        rgb = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
        return _rotate(rgb, self.probe.rotation)

    def _clip(self, span: tuple[int, int], buf: _Buffers, last_index: int) -> DecodedClip:
        a, b = span
        inside = sorted(k for k in buf.samples if a <= k < b)
        k = self.cfg.frames_per_clip
        if len(inside) > k:
            # Evenly spread picks: the sample nearest the centre of each of k equal parts of the clip.
            targets = [a + (b - a) * (j + 0.5) / k for j in range(k)]
            inside = [min(inside, key=lambda s, t=t: abs(s - t)) for t in targets]
        frames = np.stack([self._scorer_frame(buf.samples[s]) for s in inside])
        end_s = buf.times[b] if b in buf.times else buf.times[last_index] + 1.0 / self.fps
        motion, peak = clip_motion(buf.pairs, a, b)
        return DecodedClip(
            start_frame=a,
            end_frame=b,
            start_s=buf.times[a],
            end_s=end_s,
            frames=frames,
            motion_score=motion,
            motion_peak=peak,
            motion_mv_score=clip_mv_motion(buf.mv, a, b) if self.cfg.motion.codec_mvs else None,
        )
