"""Cut clips out of a source and transcode them to the shard format: target fps and short side, H.264.

Frames are resampled by timestamp: output frame j shows the source frame on screen at
`start_s + j / fps` (the latest frame whose timestamp is not after that time), so variable-frame-rate
sources and fps changes in either direction come out right. The clips of one source are cut in one pass
over the file (seeking only backwards or over long gaps), and the encoder is `model.video_io.encode_mp4`,
deterministic for the same input, which is what makes shards byte-identical across runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import av
import numpy as np

from model.video_io import encode_mp4

# Timestamps are floats from rationals: a frame exactly on a target time must count as on screen.
_EPS = 1e-6
# Skipping ahead by decoding is cheaper than a seek (which restarts at a keyframe) for short gaps.
_SEEK_AHEAD_S = 5.0


@dataclass(frozen=True)
class ClipSpec:
    clip_id: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TranscodeSettings:
    fps: float
    short_side: int
    max_frames: int
    crf: int
    preset: str


@dataclass(frozen=True)
class TranscodedClip:
    clip_id: str
    mp4: bytes
    num_frames: int
    height: int
    width: int


def output_times(start_s: float, end_s: float, fps: float, max_frames: int) -> np.ndarray:
    """Times of the output frames of a clip [start_s, end_s): one every 1/fps, at least one, at most max."""
    n = max(1, math.ceil((end_s - start_s) * fps - _EPS))
    return start_s + np.arange(min(n, max_frames)) / fps


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at `short_side` and the long side scaled to the nearest even."""
    short, long_ = min(width, height), max(width, height)
    scaled_long = max(2, round(long_ * short_side / short / 2) * 2)
    return (short_side, scaled_long) if width <= height else (scaled_long, short_side)


@contextmanager
def open_video(uri: str) -> Iterator[av.container.InputContainer]:
    """A local path or any fsspec URI (s3://, gs://, …) opened with PyAV."""
    if "://" in uri and not uri.startswith("file://"):
        import fsspec

        with fsspec.open(uri, "rb") as handle, av.open(handle) as container:
            yield container
    else:
        with av.open(uri.removeprefix("file://")) as container:
            yield container


class _FrameCursor:
    """Walks a video stream forward, answering "which frame is on screen at time t?"."""

    def __init__(self, container: av.container.InputContainer):
        self.container = container
        self.stream = container.streams.video[0]
        self.stream.codec_context.thread_count = 1
        self.frames: Iterator[av.VideoFrame] | None = None
        self.prev: av.VideoFrame | None = None  # latest frame at or before the last asked time
        self.peek: av.VideoFrame | None = None  # decoded, but after the last asked time

    def position(self) -> float | None:
        return None if self.prev is None else float(self.prev.time)

    def seek(self, t: float) -> None:
        offset = int(max(t, 0.0) / self.stream.time_base)
        self.container.seek(offset, stream=self.stream, backward=True, any_frame=False)
        self.frames = self.container.decode(self.stream)
        self.prev = self.peek = None

    def prepare(self, start_s: float) -> None:
        pos = self.position()
        if self.frames is None or (
            pos is not None and (start_s < pos - _EPS or start_s - pos > _SEEK_AHEAD_S)
        ):
            self.seek(start_s)

    def _next(self) -> av.VideoFrame | None:
        if self.peek is not None:
            frame, self.peek = self.peek, None
            return frame
        frame = next(self.frames, None)
        if frame is not None and frame.time is None:
            raise ValueError("video frames carry no timestamps")
        return frame

    def at(self, t: float) -> av.VideoFrame | None:
        while True:
            frame = self._next()
            if frame is None:
                return self.prev
            if frame.time <= t + _EPS:
                self.prev = frame
                continue
            self.peek = frame
            return self.prev if self.prev is not None else frame


def _to_rgb(frame: av.VideoFrame, short_side: int) -> np.ndarray:
    """The frame as displayed (rotation applied) at the output size, RGB uint8."""
    rotation = int(round(frame.rotation or 0)) % 360
    turned = rotation in (90, 270)
    disp_w, disp_h = (frame.height, frame.width) if turned else (frame.width, frame.height)
    out_w, out_h = output_size(disp_w, disp_h, short_side)
    coded_w, coded_h = (out_h, out_w) if turned else (out_w, out_h)
    rgb = frame.reformat(
        width=coded_w, height=coded_h, format="rgb24", interpolation="AREA", threads=1
    ).to_ndarray()
    if rotation:
        rgb = np.rot90(rgb, k=rotation // 90)
    return np.ascontiguousarray(rgb)


def transcode_clips(uri: str, specs: list[ClipSpec], settings: TranscodeSettings) -> list[TranscodedClip]:
    """Transcode several clips of one source in one pass (clips in start order)."""
    results = []
    with open_video(uri) as container:
        cursor = _FrameCursor(container)
        for spec in sorted(specs, key=lambda s: (s.start_s, s.clip_id)):
            cursor.prepare(spec.start_s)
            frames: list[np.ndarray] = []
            last_frame, last_rgb = None, None
            for t in output_times(spec.start_s, spec.end_s, settings.fps, settings.max_frames):
                frame = cursor.at(float(t))
                if frame is None:
                    raise ValueError(f"{uri}: no decodable frame at {t:.3f}s for clip {spec.clip_id}")
                if frame is not last_frame:
                    last_frame, last_rgb = frame, _to_rgb(frame, settings.short_side)
                frames.append(last_rgb)
            mp4 = encode_mp4(frames, settings.fps, crf=settings.crf, preset=settings.preset)
            h, w = frames[0].shape[:2]
            results.append(TranscodedClip(spec.clip_id, mp4, len(frames), h, w))
    return results


# What a broken input raises (PyAV's decode errors, unreadable files, clips past the end of the video).
# Anything else is a bug in this code and propagates.
INPUT_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError)


def transcode_clips_or_fail(
    uri: str, specs: list[ClipSpec], settings: TranscodeSettings
) -> tuple[list[TranscodedClip], dict[str, str]]:
    """`transcode_clips`, but a clip that cannot be transcoded is returned as {clip_id: reason} instead of
    failing its neighbours: the group is tried in one pass, and on an input error each clip alone."""
    try:
        return transcode_clips(uri, specs, settings), {}
    except INPUT_ERRORS:
        pass
    done, failed = [], {}
    for spec in specs:
        try:
            done.extend(transcode_clips(uri, [spec], settings))
        except INPUT_ERRORS as e:
            failed[spec.clip_id] = f"transcode failed: {type(e).__name__}: {e}"[:500]
    return done, failed


def _transcode_groups(rows: list[dict], clips_per_task: int) -> list[tuple[str, list[ClipSpec]]]:
    """Clips grouped by source (one decoding pass each), split into chunks of `clips_per_task`."""
    by_uri: dict[str, list[ClipSpec]] = {}
    for row in rows:
        by_uri.setdefault(row["uri"], []).append(
            ClipSpec(row["clip_id"], float(row["start_s"]), float(row["end_s"]))
        )
    groups = []
    for uri in sorted(by_uri):
        specs = sorted(by_uri[uri], key=lambda s: (s.start_s, s.clip_id))
        for i in range(0, len(specs), clips_per_task):
            groups.append((uri, specs[i : i + clips_per_task]))
    return groups


def transcode_rows(
    rows: list[dict],
    settings: TranscodeSettings,
    clips_per_task: int,
    use_ray: bool | None,
    failed: dict[str, str],
) -> Iterator[TranscodedClip]:
    """Transcode `rows` (clip_id, uri, start_s, end_s), yielding clips as they finish and adding the clips that cannot be transcoded to
    `failed` ({clip_id: reason}); on Ray when asked or (None) when it is initialised."""
    import ray

    groups = _transcode_groups(rows, clips_per_task)
    if use_ray is None:
        use_ray = ray.is_initialized()
    if not use_ray or len(groups) <= 1:
        for uri, specs in groups:
            done, bad = transcode_clips_or_fail(uri, specs, settings)
            failed.update(bad)
            yield from done
        return
    task = ray.remote(num_cpus=1, max_retries=2)(transcode_clips_or_fail)
    limit = max(2, 2 * int(ray.available_resources().get("CPU", 1)))
    pending, queue = [], list(groups)
    while queue or pending:
        while queue and len(pending) < limit:
            uri, specs = queue.pop(0)
            pending.append(task.remote(uri, specs, settings))
        ready, pending = ray.wait(pending, num_returns=1)
        done, bad = ray.get(ready[0])
        failed.update(bad)
        yield from done
