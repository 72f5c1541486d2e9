"""Reading and writing mp4 video with PyAV: the one place the project encodes H.264.

Frames are uint8 arrays shaped (T, H, W, 3), RGB. Both the generator (model.generate) and curation
(synthetic corpus, shard transcoding) encode through `Mp4Writer` (`encode_mp4`, `write_mp4` or frame by frame
for long generated video), so every mp4 the platform writes has the same codec settings.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from core.errors import UserError


class Mp4Writer:
    """Incremental H.264 mp4 encoder: `append` frames as they come, `close` (or leave the `with`) to finish.

    The one encoder of the project: `encode_mp4` and `write_mp4` run through it, so a video written frame by
    frame has the same codec settings (and bytes) as one encoded whole, and memory does not grow with its
    length. `target` is a writable binary file object, or a path written atomically (a temporary name,
    renamed on a clean close, removed on an error).
    """

    def __init__(
        self,
        target: str | os.PathLike | BinaryIO,
        fps: float,
        *,
        crf: int = 23,
        preset: str = "veryfast",
        gop: int | None = None,
        threads: int = 1,
    ):
        self.fps, self.crf, self.preset, self.gop, self.threads = fps, crf, preset, gop, threads
        self.frames_written = 0
        self.path = self._tmp = None
        if isinstance(target, (str, os.PathLike)):
            self.path = Path(target)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = self.path.with_name(f".{self.path.name}.tmp")
            target = self._file = open(self._tmp, "wb")  # noqa: SIM115  (closed in close/abort)
        else:
            self._file = None
        self._container = av.open(target, mode="w", format="mp4")
        self._stream = None

    def _open_stream(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise UserError(f"H.264 needs even frame sizes, got {height}×{width}")
        stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # mbtree=0: x264's macroblock-tree lookahead reads uninitialised memory, so with it on the same
        # frames can encode to different bytes (seen under MALLOC_PERTURB_); reruns must be identical.
        opts = {"crf": str(self.crf), "preset": self.preset, "x264-params": "mbtree=0"}
        if self.gop:
            opts["g"] = str(self.gop)
        stream.options = opts
        stream.codec_context.thread_count = self.threads
        # x264 writes its version and options into the stream; keep the bitstream reproducible.
        self._container.metadata["encoder"] = ""
        self._stream = stream

    def append(self, frame: np.ndarray) -> None:
        """Encode one RGB uint8 frame (H×W×3, even H and W, the size of the first frame)."""
        frame = np.ascontiguousarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be uint8 H×W×3, got {frame.dtype} {frame.shape}")
        if self._stream is None:
            self._open_stream(*frame.shape[:2])
        elif frame.shape[:2] != (self._stream.height, self._stream.width):
            raise ValueError(
                f"frame {self.frames_written} is {frame.shape[0]}×{frame.shape[1]}, the video is "
                f"{self._stream.height}×{self._stream.width}"
            )
        # Convert to yuv420p ourselves: letting the encoder convert RGB frames made the output depend on
        # leftover buffer contents (the same frames sometimes gave different bytes), which breaks
        # byte-identical reruns.
        yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
        for packet in self._stream.encode(yuv):
            self._container.mux(packet)
        self.frames_written += 1

    def extend(self, frames: Iterable[np.ndarray]) -> None:
        for frame in frames:
            self.append(frame)

    def close(self) -> None:
        """Flush the encoder and finish the mp4 (renaming it into place when writing to a path)."""
        if self._stream is None:
            self.abort()
            raise ValueError("no frames to encode")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        if self._file is not None:
            self._file.close()
            os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop an unfinished video (the temporary file too)."""
        self._container.close()
        if self._file is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def encode_mp4(frames: Iterable[np.ndarray], fps: float, **settings) -> bytes:
    """Encode RGB uint8 frames (each H×W×3, even H and W) to H.264 mp4 bytes (`settings`: `Mp4Writer`'s
    crf, preset, gop, threads).

    Deterministic for the same input and settings (single-threaded x264 by default), which is what makes
    re-runs of curation byte-identical.
    """
    buf = io.BytesIO()
    with Mp4Writer(buf, fps, **settings) as writer:
        writer.extend(frames)
    return buf.getvalue()


def write_mp4(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float, **settings) -> Path:
    """Encode frames to an mp4 file, written atomically (temp name, then rename); frames may be a lazy
    iterable, which is encoded as it is consumed."""
    with Mp4Writer(path, fps, **settings) as writer:
        writer.extend(frames)
    return writer.path


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
