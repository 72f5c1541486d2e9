"""Scene cutting: PySceneDetect detectors fed frame by frame, and the rule that turns scenes into clips.

The detectors are driven directly (`process_frame`), not through `SceneManager` and a video backend, so the
single decode pass of `curation.decode` can feed them its own shrunken frames. Several detectors can run on
the same frames; their cuts are merged.

Clips of a scene [s, e): drop `trim` frames on each side that touches a cut (not at the start or end of the
video), then cut windows of `max_clip_s` from the start; a remaining tail shorter than `min_clip_s` is
dropped. Windows depend only on where the scene starts, so the windows of a long scene can be emitted as soon
as they are certain to end before the next cut — that is what keeps memory bounded on long videos.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scenedetect.common import FrameTimecode
from scenedetect.detectors import AdaptiveDetector, ContentDetector

from curation.config import DetectorConfig, SceneConfig


def make_detector(cfg: DetectorConfig, fps: float) -> ContentDetector:
    min_len = max(1, int(round(cfg.min_scene_len_s * fps)))
    if cfg.kind == "content":
        return ContentDetector(threshold=cfg.threshold, min_scene_len=min_len, luma_only=cfg.luma_only)
    return AdaptiveDetector(
        adaptive_threshold=cfg.adaptive_threshold,
        min_scene_len=min_len,
        window_width=cfg.window_width,
        min_content_val=cfg.min_content_val,
        luma_only=cfg.luma_only,
    )


@dataclass(frozen=True)
class ClipPlan:
    """Frame counts of the clip rule at one fps."""

    trim: int
    min_len: int
    max_len: int

    @classmethod
    def for_fps(cls, cfg: SceneConfig, fps: float) -> ClipPlan:
        min_len = max(1, math.ceil(cfg.min_clip_s * fps - 1e-6))
        max_len = max(min_len, int(round(cfg.max_clip_s * fps)))
        return cls(trim=int(round(cfg.trim_s * fps)), min_len=min_len, max_len=max_len)

    def first_frame(self, scene_start: int) -> int:
        """First usable frame of a scene (trimmed when the scene starts at a cut)."""
        return scene_start + (self.trim if scene_start > 0 else 0)

    def clips(self, scene_start: int, scene_end: int, video_end: bool) -> list[tuple[int, int]]:
        """Clip spans [a, b) of the scene [scene_start, scene_end)."""
        a = self.first_frame(scene_start)
        end = scene_end - (0 if video_end else self.trim)
        spans = []
        while a + self.max_len <= end:
            spans.append((a, a + self.max_len))
            a += self.max_len
        if end - a >= self.min_len:
            spans.append((a, end))
        return spans

    def lost_frames(self, cuts: list[int], num_frames: int) -> tuple[int, int]:
        """Frames of a video with these cuts that no clip covers, by cause: (trimmed at cuts, in a piece shorter
        than `min_len` — a short scene, or a scene's tail after its `max_len` windows)."""
        trimmed = short = 0
        bounds = [0, *cuts, num_frames]
        for start, end in zip(bounds, bounds[1:], strict=False):
            first = min(self.first_frame(start), end)
            last = max(end - (0 if end == num_frames else self.trim), first)
            trimmed += (first - start) + (end - last)
            tail = (last - first) % self.max_len
            short += tail if tail < self.min_len else 0
        return trimmed, short


class CutTracker:
    """Feeds frames to the detectors and turns cuts into clip spans as soon as they are final.

    `push(index, frame)` takes the shrunken BGR frame `index` (0, 1, 2, …) and returns the clip spans that
    became final; `finish(num_frames)` returns the rest. `cuts` lists every merged cut frame.
    """

    def __init__(self, cfg: SceneConfig, fps: float):
        self.fps = fps
        self.plan = ClipPlan.for_fps(cfg, fps)
        self.detectors = [make_detector(d, fps) for d in cfg.detectors]
        self.min_gap = max(1, min(int(round(d.min_scene_len_s * fps)) for d in cfg.detectors))
        # A detector reports a cut at most this many frames after the cut frame (its look-ahead window
        # plus its minimum scene length filter); windows ending earlier than that are final.
        self.lag = (
            max(d.event_buffer_length for d in self.detectors)
            + max(int(round(d.min_scene_len_s * fps)) for d in cfg.detectors)
            + 2
        )
        self.cuts: list[int] = []
        self._scene_start = 0
        self._emitted_to = 0  # every window starting before this frame was emitted
        self._last_index = -1

    def _timecode(self, index: int) -> FrameTimecode:
        return FrameTimecode(index, fps=self.fps)

    def _add_cuts(self, found: list[FrameTimecode]) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for cut in sorted(int(tc.frame_num) for tc in found):
            # Several detectors report the same cut a frame or two apart: keep the first.
            if cut <= self._scene_start or (self.cuts and cut - self.cuts[-1] < self.min_gap):
                continue
            self.cuts.append(cut)
            spans += self._close_scene(cut, video_end=False)
            self._scene_start = cut
            self._emitted_to = cut
        return spans

    def _close_scene(self, end: int, video_end: bool) -> list[tuple[int, int]]:
        return [s for s in self.plan.clips(self._scene_start, end, video_end) if s[0] >= self._emitted_to]

    def push(self, index: int, frame: np.ndarray) -> list[tuple[int, int]]:
        if index != self._last_index + 1:
            raise ValueError(f"frames must be pushed in order: got {index} after {self._last_index}")
        self._last_index = index
        found: list[FrameTimecode] = []
        tc = self._timecode(index)
        for det in self.detectors:
            found += det.process_frame(tc, frame)
        spans = self._add_cuts(found) if found else []
        # Full windows of the open scene that no future cut can shorten.
        a = max(self._emitted_to, self.plan.first_frame(self._scene_start))
        while a + self.plan.max_len + self.plan.trim + self.lag <= index:
            spans.append((a, a + self.plan.max_len))
            a += self.plan.max_len
            self._emitted_to = a
        return spans

    def finish(self, num_frames: int) -> list[tuple[int, int]]:
        found: list[FrameTimecode] = []
        if num_frames > 0:
            tc = self._timecode(num_frames - 1)
            for det in self.detectors:
                found += det.post_process(tc)
        spans = self._add_cuts([f for f in found if int(f.frame_num) < num_frames])
        return spans + self._close_scene(num_frames, video_end=True)

    def horizon(self) -> int:
        """No span emitted later can start before this frame (buffers before it can be dropped)."""
        return max(self._emitted_to, self._scene_start)


def spans_of(
    frames: Iterator[np.ndarray], cfg: SceneConfig, fps: float
) -> tuple[list[int], list[tuple[int, int]]]:
    """Cuts and clip spans of already-shrunk BGR frames (for tests and the benchmark baseline)."""
    tracker = CutTracker(cfg, fps)
    spans: list[tuple[int, int]] = []
    n = 0
    for n, frame in enumerate(frames, start=1):
        spans += tracker.push(n - 1, frame)
    spans += tracker.finish(n)
    return tracker.cuts, spans
