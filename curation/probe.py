"""Probe a source with PyAV: is it a video we can use, and what are its duration, fps, size, codec, rotation?

A bad input never raises: it becomes a `Probe` with status `rejected` and a one-line reason. The probe reads
the container header and decodes the first frame only (that is what proves the codec is decodable and what
carries the display rotation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import av

from curation.config import ProbeConfig

# Leading bytes of containers we recognise: a file that starts like one but cannot be opened is truncated
# or corrupt, not "some other kind of file".
_SIGNATURES = (
    (4, b"ftyp"),  # ISO BMFF: mp4, mov, m4v, 3gp
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"\x30\x26\xb2\x75"),  # ASF / WMV
)


@dataclass
class Probe:
    status: str  # "ok" | "rejected"
    reason: str = ""
    duration_s: float | None = None
    fps: float | None = None
    width: int | None = None  # display size, after rotation
    height: int | None = None
    codec: str | None = None
    rotation: int = 0  # degrees counter-clockwise that the frames must be turned for display
    num_frames: int | None = None  # from the header, or estimated from duration × fps
    variable_frame_rate: bool = False


def looks_like_container(head: bytes) -> bool:
    return any(head[off : off + len(sig)] == sig for off, sig in _SIGNATURES)


def _one_line(err: BaseException) -> str:
    # FFmpeg errors end with the file name; the row already says which file it is.
    text = (getattr(err, "strerror", None) or str(err)).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _reject(reason: str, **known: object) -> Probe:
    return Probe(status="rejected", reason=reason, **known)  # type: ignore[arg-type]


def _rate(value) -> float | None:
    try:
        rate = float(value) if value else 0.0
    except (TypeError, ZeroDivisionError):
        return None
    return rate if rate > 0 else None


def probe_source(handle: str | BinaryIO, size: int, config: ProbeConfig, min_duration_s: float) -> Probe:
    """Probe a path or a seekable binary file of `size` bytes."""
    if size == 0:
        return _reject("empty file (0 bytes)")
    head = _read_head(handle)
    try:
        container = av.open(handle, mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, OSError) as err:
        if looks_like_container(head):
            return _reject(f"truncated or corrupt container: {_one_line(err)}")
        return _reject(f"not a video: unrecognised file format ({_one_line(err)})")
    try:
        return _probe_open(container, config, min_duration_s)
    finally:
        container.close()


def _read_head(handle: str | BinaryIO) -> bytes:
    if isinstance(handle, str):
        with open(handle, "rb") as f:
            return f.read(16)
    pos = handle.tell()
    head = handle.read(16)
    handle.seek(pos)
    return head


def _probe_open(container: av.container.InputContainer, config: ProbeConfig, min_duration_s: float) -> Probe:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        if "audio" in kinds:
            return _reject("no video stream (audio only)")
        return _reject(f"no video stream (streams: {', '.join(kinds) or 'none'})")
    stream = container.streams.video[0]
    codec = stream.codec_context.name if stream.codec_context is not None else None
    try:
        av.codec.Codec(codec or "", "r")
    except Exception:
        return _reject(f"undecodable codec {codec or 'unknown'}: no decoder available", codec=codec)

    average = _rate(stream.average_rate)
    nominal = _rate(stream.base_rate) or _rate(stream.guessed_rate)
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    fps = average or nominal
    num_frames = stream.frames or (int(round(duration * fps)) if duration and fps else None)
    if fps is None and duration and stream.frames:
        fps = stream.frames / duration
    known = {"codec": codec, "duration_s": duration, "fps": fps, "num_frames": num_frames}
    known["variable_frame_rate"] = bool(average and nominal and abs(average - nominal) > 0.01 * nominal)

    width, height = stream.codec_context.width, stream.codec_context.height
    if not width or not height:
        return _reject("absurd frame size: the header gives no width/height", **known)
    try:
        first = next(container.decode(stream))
    except StopIteration:
        return _reject(f"undecodable {codec} stream: no frame could be decoded", **known)
    except av.error.FFmpegError as err:
        return _reject(f"undecodable {codec} stream: {_one_line(err)}", **known)
    rotation = int(round(first.rotation or 0)) % 360
    if rotation in (90, 270):
        width, height = height, width
    known.update(width=width, height=height, rotation=rotation)

    long, short = max(width, height), min(width, height)
    if long > config.max_side or short < config.min_side or long / short > config.max_aspect:
        return _reject(
            f"absurd frame size {width}x{height} (allowed: sides {config.min_side}..{config.max_side}, "
            f"aspect <= {config.max_aspect:g})",
            **known,
        )
    if fps is None:
        return _reject("no frame rate in the header and none can be derived", **known)
    if duration is None:
        return _reject("no duration in the header", **known)
    if duration < min_duration_s:
        return _reject(f"too short: {duration:.2f} s < {min_duration_s:.2f} s", **known)
    return Probe(status="ok", **known)  # type: ignore[arg-type]
