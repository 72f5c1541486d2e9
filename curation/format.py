"""The shard contract between curation (writer) and training (reader).

Everything both sides must agree on lives here and nowhere else: how shards are named, which members a
sample has, which columns the index carries, how clip ids are formed, and how a clip is assigned to a
(resolution, frames) bucket. This module has no dependency beyond the standard library and `core/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from core.digest import digest

SHARD_PATTERN = "{prefix}-{index:06d}.tar"
SHARD_GLOB = "*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"
SHARDS_DIR = "shards"
INDEX_FILE = "index.parquet"
THRESHOLDS_FILE = "thresholds.yaml"  # in the curation output folder: the thresholds that produced `kept`

# Members of one sample, keyed by WebDataset extension (the part after the key's first dot).
VIDEO_MEMBER = "mp4"
META_MEMBER = "json"
CAPTION_MEMBER = "txt"
LATENT_MEMBER = "latent.safetensors"  # optional, precomputed autoencoder latents

# One row per sample. `shard`: tar name inside the shards folder; `key`: sample key; `num_frames`, `height`,
# `width`, `fps`, `duration_s`: the shard video; `bucket`: `Bucket.name` of the clip; `offset`: byte offset in
# the tar of the header of the sample's first member; `length`: bytes from `offset` to the end of its last
# member's (512-byte padded) data (not `size`, which pandas rows and frames already have as an attribute).
# `[offset, offset + length)` is the whole sample as a run of tar members, so a
# reader fetches it with one ranged read and parses it with `tarfile`, scanning no headers.
INDEX_COLUMNS = (
    "shard",
    "key",
    "num_frames",
    "height",
    "width",
    "fps",
    "duration_s",
    "bucket",
    "offset",
    "length",
)
# Columns an index written before byte offsets existed lacks: a reader then scans the tar headers instead.
INDEX_SPAN_COLUMNS = ("offset", "length")

# Frame-count buckets: a clip goes to the largest bucket it can fill. 4k+1 counts suit causal video VAEs
# (Wan2.1 compresses 4 frames into one latent after the first).
FRAME_BUCKETS = (1, 17, 33, 49, 65, 81, 121, 161, 241, 321)

# WebDataset splits a member name at the key's first dot, and keys become file names when unpacked: keep
# them to a safe alphabet so a key can never name a path outside the output folder.
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def validate_key(key: str) -> str:
    """Return `key` if it is a safe sample key, else raise ValueError naming it."""
    if not _KEY_RE.match(key):
        raise ValueError(f"invalid sample key {key!r}: use 1-128 characters from [A-Za-z0-9_-]")
    return key


def make_clip_id(source_id: str, start_frame: int, end_frame: int) -> str:
    """Deterministic clip id from the source fingerprint and the clip's frame span [start, end)."""
    if not 0 <= start_frame < end_frame:
        raise ValueError(f"bad frame span [{start_frame}, {end_frame}) for source {source_id}")
    return validate_key(f"{source_id[:16]}_{start_frame:07d}_{end_frame:07d}")


def shard_name(prefix: str, index: int) -> str:
    validate_key(prefix)
    return SHARD_PATTERN.format(prefix=prefix, index=index)


def frame_bucket(num_frames: int, buckets: tuple[int, ...] = FRAME_BUCKETS) -> int:
    """The largest frame bucket that a clip of `num_frames` frames can fill (0 if none)."""
    fitting = [b for b in buckets if b <= num_frames]
    return max(fitting) if fitting else 0


@dataclass(frozen=True)
class Bucket:
    """A (resolution, frames) bucket: every batch drawn from one bucket has one tensor shape."""

    height: int
    width: int
    num_frames: int

    @property
    def name(self) -> str:
        return f"{self.height}x{self.width}_t{self.num_frames}"

    @classmethod
    def parse(cls, name: str) -> Bucket:
        m = re.fullmatch(r"(\d+)x(\d+)_t(\d+)", name)
        if not m:
            raise ValueError(f"invalid bucket name {name!r}: expected HxW_tN, e.g. 256x448_t81")
        return cls(int(m[1]), int(m[2]), int(m[3]))


def bucket_for(height: int, width: int, num_frames: int) -> Bucket:
    """Bucket of a transcoded clip: its exact size (shards are written at a target short side) and the
    largest frame bucket it fills."""
    return Bucket(height, width, frame_bucket(num_frames))


# SANA-Video's captions end in the clip's motion score: `caption_text` (curation) writes the suffix into the
# shards, `svp generate` appends it to a prompt the way the stage's captions had it.
MOTION_CAPTION_TEMPLATE = "{caption} motion score: {motion_score}."
_MOTION_SUFFIX_RE = re.compile(r"(?:^|\s)motion score: (-?\d+)\.\s*$")


def with_motion_score(caption: str, motion_score: float) -> str:
    """`caption` with SANA-Video's motion-score suffix (the score rounded to an integer)."""
    text = MOTION_CAPTION_TEMPLATE.format(caption=caption.strip(), motion_score=int(round(motion_score)))
    return text.strip()


def split_motion_score(text: str) -> tuple[str, int | None]:
    """(caption, motion score) of a caption that ends in the motion-score suffix, else (text, None)."""
    match = _MOTION_SUFFIX_RE.search(text)
    if match is None:
        return text, None
    return text[: match.start()].strip(), int(match[1])


def is_safe_relative(relative: str) -> bool:
    """True when `relative` stays inside whatever folder it is joined to (not absolute, no '..')."""
    p = PurePosixPath(relative)
    return not p.is_absolute() and ".." not in p.parts


def thresholds_digest(thresholds: dict) -> str:
    """Short stable hash of what a thresholds mapping means (the parsed `thresholds.yaml`): the same value in
    curation's report and in the training runs' MLflow tags, whatever the YAML's formatting."""
    return digest(thresholds)
