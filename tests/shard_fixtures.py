"""Real WebDataset shards for tests, written the way curation writes them (`curation.format`).

Each clip is a coloured square moving across a plain background, H.264-encoded with `model.video_io`, with a
caption that says what it shows ("a red square moves right"), so a tiny model has something learnable. Some
samples can be broken on purpose: an mp4 that is not a video, or no caption member. `broken_keys(folder)` tells
which (from a `fixture.json` next to the shards, not part of the contract).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from curation.format import (
    CAPTION_MEMBER,
    INDEX_COLUMNS,
    INDEX_FILE,
    META_MEMBER,
    SHARDS_DIR,
    VIDEO_MEMBER,
    bucket_for,
    make_clip_id,
    shard_name,
    with_motion_score,
)
from curation.shard_tar import write_tar
from model.video_io import encode_mp4

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
MOTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def moving_square(height: int, width: int, frames: int, color: str, motion: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 60, size=3)
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    video[:] = background
    side = max(4, min(height, width) // 4)
    dx, dy = MOTIONS[motion]
    x0, y0 = rng.integers(0, width - side), rng.integers(0, height - side)
    speed = max(1, min(height, width) // 16)
    for t in range(frames):
        x = int(np.clip(x0 + dx * speed * t, 0, width - side))
        y = int(np.clip(y0 + dy * speed * t, 0, height - side))
        video[t, y : y + side, x : x + side] = COLORS[color]
    return video


def make_shards(
    folder: str | Path,
    num_clips: int,
    sizes: Sequence[tuple[int, int]] = ((64, 64),),
    frames: int | Sequence[int] = 24,
    fps: float = 12.0,
    seed: int = 0,
    clips_per_shard: int = 4,
    bad_video: int = 0,
    no_caption: int = 0,
    prefix: str = "clips",
    motion_scores: Sequence[float] | None = None,
) -> Path:
    """Write `num_clips` samples into `folder/shards/{prefix}-NNNNNN.tar` + `folder/shards/index.parquet` (a
    curation output folder) and return `folder`. Clip i has size `sizes[i % len(sizes)]` and frame count
    `frames[i % len(frames)]`. The last `bad_video` samples carry bytes that are not an mp4 and the
    `no_caption` samples before them have no caption member; all are listed in the index, as curation would.
    With `motion_scores`, clip i's caption ends in " motion score: N." of `motion_scores[i]`, as curation's."""
    folder = Path(folder)
    shards = folder / SHARDS_DIR
    shards.mkdir(parents=True, exist_ok=True)
    frame_counts = [frames] if isinstance(frames, int) else list(frames)
    rng = np.random.default_rng(seed)
    rows, broken = [], {}
    samples: dict[str, list[tuple[str, list[tuple[str, bytes]]]]] = {}
    for i in range(num_clips):
        height, width = sizes[i % len(sizes)]
        count = frame_counts[i % len(frame_counts)]
        color = str(rng.choice(list(COLORS)))
        motion = str(rng.choice(list(MOTIONS)))
        key = make_clip_id(f"src{seed:04d}{i:06d}", 0, count)
        caption = f"a {color} square moves {motion}"
        mp4 = encode_mp4(moving_square(height, width, count, color, motion, seed * 100003 + i), fps)
        text = caption if motion_scores is None else with_motion_score(caption, motion_scores[i])
        members = {CAPTION_MEMBER: text.encode()}
        if i >= num_clips - bad_video:
            mp4, broken[key] = b"this is not an mp4 file" * 8, "undecodable_video"
        elif i >= num_clips - bad_video - no_caption:
            members, broken[key] = {}, "missing_caption"
        meta = {"clip_id": key, "caption": caption, "fps": fps, "width": width, "height": height}
        members = {VIDEO_MEMBER: mp4, META_MEMBER: json.dumps(meta).encode(), **members}
        shard = shard_name(prefix, i // clips_per_shard)
        samples.setdefault(shard, []).append((key, list(members.items())))
        rows.append(
            {
                "shard": shard,
                "key": key,
                "num_frames": count,
                "height": height,
                "width": width,
                "fps": fps,
                "duration_s": count / fps,
                "bucket": bucket_for(height, width, count).name,
            }
        )
    spans = [span for shard, in_shard in samples.items() for span in write_tar(shards / shard, in_shard)]
    for row, (offset, length) in zip(rows, spans, strict=True):
        row["offset"], row["length"] = offset, length
    pd.DataFrame(rows, columns=list(INDEX_COLUMNS)).to_parquet(shards / INDEX_FILE, index=False)
    (shards / "fixture.json").write_text(json.dumps({"broken": broken}))
    return folder


def broken_keys(folder: str | Path) -> dict[str, str]:
    """Key → reason for the samples `make_shards` broke on purpose."""
    return json.loads((Path(folder) / SHARDS_DIR / "fixture.json").read_text())["broken"]
