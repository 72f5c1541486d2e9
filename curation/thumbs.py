"""One small JPEG per clip, `OUT/thumbs/<clip_id>.jpg`, made from a frame the decode pass already has.

The worker encodes the middle scorer frame of each clip (no extra decode) and the bytes travel with the
clip's row to the driver, which writes them before it records the source as finished: a resumed run finds
the thumbnails of finished sources already there. Same frames, same encoder settings: same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from curation.format import validate_key

THUMBS_DIR = "thumbs"
THUMB_COLUMN = "thumb_jpeg"  # travels in the stream only; never written to clips.parquet
THUMB_LONG_SIDE = 160
_JPEG_QUALITY = 80


def thumbnail_jpeg(frames: np.ndarray) -> bytes:
    """JPEG bytes of the middle frame of `frames` ((K, h, w, 3) uint8 RGB), long side at most 160 px."""
    if len(frames) == 0:
        return b""
    rgb = np.asarray(frames[len(frames) // 2], dtype=np.uint8)
    h, w = rgb.shape[:2]
    scale = min(1.0, THUMB_LONG_SIDE / max(h, w))
    if scale < 1.0:
        size = (max(2, round(w * scale)), max(2, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]
    )
    if not ok:  # pragma: no cover - OpenCV cannot encode a valid uint8 image only when broken
        raise RuntimeError("OpenCV failed to encode a thumbnail")
    return data.tobytes()


def thumb_path(out_dir: str | os.PathLike, clip_id: str) -> Path:
    """Where the thumbnail of `clip_id` lives; a clip id that could name another folder is refused."""
    return Path(out_dir) / THUMBS_DIR / f"{validate_key(str(clip_id))}.jpg"


def write_thumbs(out_dir: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write (atomically) the thumbnail of every record that carries one, and take the bytes out of it."""
    from core.atomic import atomic_write_bytes

    folder = Path(out_dir) / THUMBS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for rec in records:
        data = rec.pop(THUMB_COLUMN, None)
        if data is not None and len(data):
            atomic_write_bytes(thumb_path(out_dir, rec["clip_id"]), bytes(data))
