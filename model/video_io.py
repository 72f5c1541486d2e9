"""Reading and writing mp4 video with PyAV: the one place the project encodes H.264.

Frames are uint8 arrays shaped (T, H, W, 3), RGB. Both the generator (model.generate) and curation
(synthetic corpus, shard transcoding) encode through `encode_mp4`, so every mp4 the platform writes has the
same codec settings.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def encode_mp4(
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    crf: int = 23,
    preset: str = "veryfast",
    gop: int | None = None,
    threads: int = 1,
) -> bytes:
    """Encode RGB uint8 frames (each H×W×3, even H and W) to H.264 mp4 bytes.

    Deterministic for the same input and settings (single-threaded x264 by default), which is what makes
    re-runs of curation byte-identical.
    """
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = None
        for frame in frames:
            frame = np.ascontiguousarray(frame)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frames must be uint8 H×W×3, got {frame.dtype} {frame.shape}")
            if stream is None:
                h, w = frame.shape[:2]
                if h % 2 or w % 2:
                    raise ValueError(f"H.264 needs even frame sizes, got {h}×{w}")
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                # mbtree=0: x264's macroblock-tree lookahead reads uninitialised memory, so with it on the same
                # frames can encode to different bytes (seen under MALLOC_PERTURB_); reruns must be identical.
                opts = {"crf": str(crf), "preset": preset, "x264-params": "mbtree=0"}
                if gop:
                    opts["g"] = str(gop)
                stream.options = opts
                stream.codec_context.thread_count = threads
                # x264 writes its version and options into the stream; keep the bitstream reproducible.
                container.metadata["encoder"] = ""
            # Convert to yuv420p ourselves: letting the encoder convert RGB frames made the output depend on
            # leftover buffer contents (the same frames sometimes gave different bytes), which breaks
            # byte-identical reruns.
            yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            for packet in stream.encode(yuv):
                container.mux(packet)
        if stream is None:
            raise ValueError("no frames to encode")
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_mp4(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float, **kwargs) -> Path:
    """Encode frames to an mp4 file, written atomically (temp name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(encode_mp4(frames, fps, **kwargs))
    os.replace(tmp, path)
    return path


def iter_frames(source: str | os.PathLike | bytes, *, threads: int = 1) -> Iterator[np.ndarray]:
    """Decode an mp4 (path or bytes) to RGB uint8 frames, one at a time."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with av.open(handle) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def read_frames(source: str | os.PathLike | bytes) -> np.ndarray:
    """Decode a whole (short) video to a (T, H, W, 3) uint8 array."""
    frames = list(iter_frames(source))
    if not frames:
        raise ValueError("video has no decodable frames")
    return np.stack(frames)
