"""From mp4 bytes to a training clip: pick a window, resample it to the stage's fps by timestamps, decode
only what the window needs, resize to cover the bucket and centre-crop to it.

The window is chosen before decoding, from the clip's frame count and fps in the index, with a generator
the caller seeds from (seed, epoch, key): the same sample gives the same clip in the same epoch on any
machine, which is what exact resume relies on.
"""

from __future__ import annotations

import hashlib
import io
import math

import av
import numpy as np
import torch
import torch.nn.functional as F

from curation.format import CAPTION_MEMBER, VIDEO_MEMBER


class BadClip(Exception):
    """A sample that cannot become a training clip; `reason` is the counter it is reported under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def clip_span(num_frames, fps):
    """Seconds from the first to the last frame of a clip (scalars or numpy arrays)."""
    return np.maximum(np.asarray(num_frames) - 1, 0) / fps


def fits(num_frames, fps, want_frames: int, target_fps: float | None):
    """Whether clips hold a window of `want_frames` frames at `target_fps` (native fps when None);
    `num_frames` and `fps` may be numpy arrays (one entry per clip)."""
    if target_fps is None:
        return np.asarray(num_frames) >= want_frames
    return (want_frames - 1) / target_fps <= clip_span(num_frames, fps) + 1e-6


def window_times(
    num_frames: int, fps: float, want_frames: int, target_fps: float | None, rng: np.random.Generator
) -> np.ndarray:
    """Timestamps (seconds from the clip's first frame) of the frames to take: `want_frames` frames
    1/target_fps apart, starting at a random point that keeps the window inside the clip."""
    step = 1.0 / (target_fps or fps)
    slack = float(clip_span(num_frames, fps)) - (want_frames - 1) * step
    if slack < -1e-6:
        raise BadClip("too_short", f"{num_frames} frames at {fps:g} fps hold no {want_frames}-frame window")
    # Start on a source frame so that native-fps windows are exact frame runs.
    starts = int(math.floor(max(slack, 0.0) * fps + 1e-6)) + 1
    start = rng.integers(starts) / fps
    return start + step * np.arange(want_frames)


def decode_at(data: bytes, times: np.ndarray) -> np.ndarray:
    """Decode the frames nearest to `times` (seconds from the first frame): (len(times), H, W, 3) uint8.

    Decoding starts at the key frame before the window (a seek) and stops once the window is covered.
    """
    try:
        return _decode_at(data, times)
    except BadClip:
        raise
    except (av.FFmpegError, ValueError, OSError, EOFError) as err:
        raise BadClip("undecodable_video", f"{type(err).__name__}: {err}") from None


def _decode_at(data: bytes, times: np.ndarray) -> np.ndarray:
    out: list[np.ndarray | None] = [None] * len(times)
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise BadClip("undecodable_video", "no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # parallelism comes from the dataloader workers
        base = stream.start_time or 0
        tb = float(stream.time_base)
        frame_gap = 1.0 / float(stream.average_rate or 25)
        if times[0] > 2 * frame_gap:
            container.seek(base + int((times[0] - frame_gap) / tb), stream=stream, backward=True)
        prev_t, prev = None, None
        converted: dict[int, np.ndarray] = {}
        i = 0

        def take(frame_id: int, frame: av.VideoFrame) -> np.ndarray:
            if frame_id not in converted:
                converted.clear()
                converted[frame_id] = frame.to_ndarray(format="rgb24")
            return converted[frame_id]

        for n, frame in enumerate(container.decode(stream)):
            t = ((frame.pts if frame.pts is not None else 0) - base) * tb
            while i < len(times) and t >= times[i]:
                # The window time lies between the previous frame and this one: take the nearer.
                if prev is not None and times[i] - prev_t < t - times[i]:
                    out[i] = take(n - 1, prev)
                else:
                    out[i] = take(n, frame)
                i += 1
            if i == len(times):
                break
            prev_t, prev = t, frame
        # The last window frames may fall after the last frame's timestamp by less than a frame.
        while i < len(times) and prev is not None and times[i] - prev_t <= frame_gap * 1.01:
            out[i] = take(n, prev)
            i += 1
    if i < len(times):
        if prev is None:
            raise BadClip("undecodable_video", "no decodable frames")
        raise BadClip("too_short", f"window ends at {times[-1]:.3f}s but the video ends at {prev_t:.3f}s")
    return np.stack(out)


def resize_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (3, T, height, width) float32 in [-1, 1]: the centred region of the bucket's
    aspect ratio, scaled to the bucket's size. Cropping first, in uint8, leaves fewer pixels to convert and
    resample."""
    h, w = frames.shape[1:3]
    scale = max(height / h, width / w)
    crop_h, crop_w = min(h, round(height / scale)), min(w, round(width / scale))
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    video = torch.from_numpy(np.ascontiguousarray(frames[:, top : top + crop_h, left : left + crop_w]))
    if (crop_h, crop_w) == (height, width):
        video = video.permute(3, 0, 1, 2).float()
    else:
        video = video.permute(0, 3, 1, 2).float()
        video = F.interpolate(
            video, size=(height, width), mode="bilinear", antialias=scale < 1, align_corners=False
        )
        video = video.permute(1, 0, 2, 3)
    return video.contiguous().div_(127.5).sub_(1.0).clamp_(-1.0, 1.0)


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def clip_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The generator of a sample's window in an epoch: the same on any machine and in any process."""
    return np.random.default_rng([seed, epoch, key_hash(key)])


def clip_from_members(
    members: dict[str, bytes],
    where: str,
    key: str,
    num_frames: int,
    fps: float,
    size: tuple[int, int, int],
    target_fps: float | None,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, str]:
    """A sample's members (`shard_reader.ShardReader.read_sample`) → (video (3, T, H, W) in [-1, 1], caption)
    at `size` = (height, width, frames), the window drawn from `rng`. BadClip says why a sample is unusable.
    Shared by the training loader and `svp encode`, so precomputed latents see exactly the loader's pixels."""
    if VIDEO_MEMBER not in members:
        raise BadClip("missing_video", f"{where}: no {key}.{VIDEO_MEMBER}")
    caption = members.get(CAPTION_MEMBER, b"").decode("utf-8", errors="replace").strip()
    if not caption:
        raise BadClip("missing_caption", f"{where}: no caption for {key}")
    height, width, frames = size
    times = window_times(num_frames, fps, frames, target_fps, rng)
    return resize_crop(decode_at(members[VIDEO_MEMBER], times), height, width), caption
