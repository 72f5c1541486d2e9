"""WebDataset shards of the kept clips: deterministic, size-targeted, atomic, resumable.

`write_shards(out_dir, kept, cfg)`:
1. transcodes every kept clip that is not already transcoded with these settings into
   `OUT/shards/.transcoded/{clip_id}.mp4` (Ray tasks when Ray is initialised, serially otherwise; the bytes
   are the same either way);
2. plans the shards: clips in clip_id order, a new shard whenever the next sample would push the tar past
   `target_shard_mb`;
3. writes each planned shard whose content plan differs from what `OUT/shards/.manifest.json` says the
   existing tar holds (temp name, fsync, rename; fixed tar headers so the same plan gives the same bytes);
4. removes stale shards, temp files and cached clips (with `keep_transcoded`, only those of other settings:
   clips the thresholds drop keep theirs), and writes `index.parquet`, with each sample's byte span
   in its tar (`tar_layout`: computed from the headers, so it holds for shards a rerun did not rewrite).
The manifest remembers the settings, each clip's transcode (size, sha256, frames, size in pixels) and each
shard's plan hash, so a rerun or a re-filter only does the work whose inputs changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.format import (
    CAPTION_MEMBER,
    FRAME_BUCKETS,
    INDEX_COLUMNS,
    INDEX_FILE,
    META_MEMBER,
    SHARD_GLOB,
    SHARDS_DIR,
    VIDEO_MEMBER,
    bucket_for,
    shard_name,
    validate_key,
)
from curation.shard_tar import TAR_BLOCK, tar_layout, tar_member_size, write_tar
from curation.transcode import ClipSpec, TranscodedClip, TranscodeSettings, transcode_clips

log = logging.getLogger(__name__)

MANIFEST_FILE = ".manifest.json"
TRANSCODED_DIR = ".transcoded"

INDEX_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("key", pa.string()),
        ("num_frames", pa.int64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("fps", pa.float64()),
        ("duration_s", pa.float64()),
        ("bucket", pa.string()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
    ]
)
assert tuple(INDEX_SCHEMA.names) == INDEX_COLUMNS


class ShardConfig(BaseModel):
    """`shards:` section of the curation config."""

    model_config = ConfigDict(extra="forbid")

    fps: float = Field(16.0, gt=0, le=240, description="frames per second of the shard videos")
    short_side: int = Field(256, ge=16, le=4320, description="short side in pixels (even)")
    max_frames: int = Field(max(FRAME_BUCKETS), ge=1, description="longer clips keep their first frames")
    target_shard_mb: float = Field(512.0, gt=0, description="a shard is closed before it grows past this")
    prefix: str = "clips"
    crf: int = Field(23, ge=0, le=51)
    preset: str = "veryfast"
    motion_caption: bool = Field(True, description="append ' motion score: N.' to the caption (SANA-Video)")
    keep_transcoded: bool = Field(True, description="keep transcoded clips so re-filtering is cheap")
    clips_per_task: int = Field(16, ge=1, description="clips of one source transcoded per Ray task")

    @field_validator("short_side")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"must be even for H.264, got {v}")
        return v

    @field_validator("prefix")
    @classmethod
    def _safe_prefix(cls, v: str) -> str:
        return validate_key(v)

    def transcode_settings(self) -> TranscodeSettings:
        return TranscodeSettings(self.fps, self.short_side, self.max_frames, self.crf, self.preset)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write to a temp name in the same folder, fsync, rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_safe(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def caption_text(row: dict, motion_caption: bool) -> str:
    """The `.txt` member: the caption, plus SANA-Video's " motion score: N." when on and scored."""
    caption = row.get("caption")
    text = caption.strip() if isinstance(caption, str) else ""
    motion = row.get("motion_score")
    if motion_caption and isinstance(motion, int | float) and math.isfinite(motion):
        text = f"{text} motion score: {int(round(motion))}.".strip()
    return text


_T = TypeVar("_T")


def _sample_members(meta: _T, mp4: _T, caption: _T) -> list[tuple[str, _T]]:
    """A sample's members in tar order, as bytes (to write) or as lengths (to lay out)."""
    return [(META_MEMBER, meta), (VIDEO_MEMBER, mp4), (CAPTION_MEMBER, caption)]


class _Manifest:
    def __init__(self, shards_dir: Path, settings_hash: str):
        self.path = shards_dir / MANIFEST_FILE
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        same = data.get("settings_hash") == settings_hash
        self.data = {
            "settings_hash": settings_hash,
            "config": data.get("config"),
            "clips": data.get("clips", {}) if same else {},
            "shards": data.get("shards", {}) if same else {},
        }

    @property
    def clips(self) -> dict[str, dict]:
        return self.data["clips"]

    @property
    def shards(self) -> dict[str, str]:
        return self.data["shards"]

    def save(self) -> None:
        atomic_write_bytes(self.path, json.dumps(self.data, sort_keys=True, indent=1).encode())


def read_shard_config(out_dir: str | os.PathLike) -> ShardConfig | None:
    """The ShardConfig the last `write_shards` into `out_dir` used (None if there was none)."""
    path = Path(out_dir) / SHARDS_DIR / MANIFEST_FILE
    if not path.is_file():
        return None
    config = json.loads(path.read_text()).get("config")
    return ShardConfig.model_validate(config) if config else None


def _spec_hash(row: dict, settings_hash: str) -> str:
    key = [row["clip_id"], row.get("source_id"), float(row["start_s"]), float(row["end_s"]), settings_hash]
    return _sha256(json.dumps(key).encode())[:16]


def _transcode_groups(rows: list[dict], cfg: ShardConfig) -> list[tuple[str, list[ClipSpec]]]:
    """Clips grouped by source (one decoding pass each), split into chunks of `clips_per_task`."""
    by_uri: dict[str, list[ClipSpec]] = {}
    for row in rows:
        by_uri.setdefault(row["uri"], []).append(
            ClipSpec(row["clip_id"], float(row["start_s"]), float(row["end_s"]))
        )
    groups = []
    for uri in sorted(by_uri):
        specs = sorted(by_uri[uri], key=lambda s: (s.start_s, s.clip_id))
        for i in range(0, len(specs), cfg.clips_per_task):
            groups.append((uri, specs[i : i + cfg.clips_per_task]))
    return groups


def _transcode_all(rows: list[dict], cfg: ShardConfig, use_ray: bool | None) -> Iterator[TranscodedClip]:
    """Transcode `rows`, yielding clips as they finish; on Ray when asked or (None) when it is initialised."""
    import ray

    groups = _transcode_groups(rows, cfg)
    settings = cfg.transcode_settings()
    if use_ray is None:
        use_ray = ray.is_initialized()
    if not use_ray or len(groups) <= 1:
        for uri, specs in groups:
            yield from transcode_clips(uri, specs, settings)
        return
    task = ray.remote(num_cpus=1, max_retries=2)(transcode_clips)
    limit = max(2, 2 * int(ray.available_resources().get("CPU", 1)))
    pending, queue = [], list(groups)
    while queue or pending:
        while queue and len(pending) < limit:
            uri, specs = queue.pop(0)
            pending.append(task.remote(uri, specs, settings))
        done, pending = ray.wait(pending, num_returns=1)
        yield from ray.get(done[0])


def _plan(samples: list[tuple[str, int]], cfg: ShardConfig) -> list[list[int]]:
    """Split samples (key, tar bytes) in order into shards of at most ~target bytes (≥ 1 sample each)."""
    target = cfg.target_shard_mb * 1024 * 1024
    shards: list[list[int]] = []
    size = 0
    for i, (_, nbytes) in enumerate(samples):
        if not shards or (size + nbytes + 2 * TAR_BLOCK > target and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return shards


def _index_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)


def write_shards(
    out_dir: str | os.PathLike, clips_kept: pd.DataFrame, cfg: ShardConfig, *, use_ray: bool | None = None
) -> pd.DataFrame:
    """Write `OUT/shards/*.tar` and `index.parquet` for `clips_kept`; returns the index.

    `use_ray`: transcode in Ray tasks (True), in this process (False), or on Ray if it is initialised (None).
    """
    from curation.tables import write_table_atomic

    shards_dir = Path(out_dir) / SHARDS_DIR
    cache_dir = shards_dir / TRANSCODED_DIR
    cache_dir.mkdir(parents=True, exist_ok=True)
    for leftover in [*shards_dir.glob(".*.tmp"), *cache_dir.glob(".*.tmp")]:
        leftover.unlink()  # a killed run's half-written file

    missing_cols = {"clip_id", "uri", "start_s", "end_s"} - set(clips_kept.columns)
    if missing_cols:
        raise ValueError(f"clips to shard lack columns: {', '.join(sorted(missing_cols))}")
    table = clips_kept.drop(columns=[c for c in ("frames",) if c in clips_kept.columns])
    rows = [_json_safe(r) for r in table.sort_values("clip_id", kind="stable").to_dict("records")]
    keys = [validate_key(str(r["clip_id"])) for r in rows]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate clip ids among clips to shard: {', '.join(dupes[:5])}")

    settings_hash = _sha256(json.dumps(asdict(cfg.transcode_settings()), sort_keys=True).encode())[:16]
    manifest = _Manifest(shards_dir, settings_hash)
    manifest.data["config"] = cfg.model_dump(mode="json")
    specs = {r["clip_id"]: _spec_hash(r, settings_hash) for r in rows}

    def cached(cid: str) -> Path:
        return cache_dir / f"{cid}.mp4"

    def transcode(todo: list[dict]) -> None:
        for clip in _transcode_all(todo, cfg, use_ray):
            atomic_write_bytes(cached(clip.clip_id), clip.mp4)
            manifest.clips[clip.clip_id] = {
                "spec": specs[clip.clip_id],
                "bytes": len(clip.mp4),
                "sha256": _sha256(clip.mp4),
                "num_frames": clip.num_frames,
                "height": clip.height,
                "width": clip.width,
            }
        manifest.save()

    unknown = [r for r in rows if manifest.clips.get(r["clip_id"], {}).get("spec") != specs[r["clip_id"]]]
    if unknown:
        log.info("transcoding %d of %d clips", len(unknown), len(rows))
        transcode(unknown)

    members = []  # per sample: (key, [(ext, bytes or None for the mp4)], sha per member)
    for row in rows:
        entry = manifest.clips[row["clip_id"]]
        meta = dict(row)
        meta["shard_video"] = {k: entry[k] for k in ("num_frames", "height", "width")} | {"fps": cfg.fps}
        meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
        txt_bytes = caption_text(row, cfg.motion_caption).encode()
        members.append((row["clip_id"], entry, meta_bytes, txt_bytes))

    sizes = [
        (cid, tar_member_size(len(m)) + tar_member_size(e["bytes"]) + tar_member_size(len(t)))
        for cid, e, m, t in members
    ]
    plan = _plan(sizes, cfg)
    names = [shard_name(cfg.prefix, n) for n in range(len(plan))]

    def plan_hash(indices: list[int]) -> str:
        h = hashlib.sha256()
        for i in indices:
            cid, entry, meta_bytes, txt_bytes = members[i]
            h.update(f"{cid}|{entry['sha256']}|{_sha256(meta_bytes)}|{_sha256(txt_bytes)}\n".encode())
        return h.hexdigest()

    hashes = [plan_hash(p) for p in plan]
    to_write = [
        n
        for n, (name, h) in enumerate(zip(names, hashes, strict=True))
        if not ((shards_dir / name).is_file() and manifest.shards.get(name) == h)
    ]

    # Clips whose bytes a shard needs but the cache no longer holds (keep_transcoded off): transcode again.
    def in_cache(i: int) -> bool:
        path = cached(rows[i]["clip_id"])
        return path.is_file() and path.stat().st_size == members[i][1]["bytes"]

    lacking = [rows[i] for n in to_write for i in plan[n] if not in_cache(i)]
    if lacking:
        expected = {r["clip_id"]: manifest.clips[r["clip_id"]]["sha256"] for r in lacking}
        transcode(lacking)
        changed = [cid for cid, sha in expected.items() if manifest.clips[cid]["sha256"] != sha]
        if changed:
            raise RuntimeError(
                f"transcoding {changed[0]} again gave different bytes (encoder changed?): "
                f"delete {shards_dir} and rerun"
            )

    for n in to_write:
        samples = []
        for i in plan[n]:
            cid, entry, meta_bytes, txt_bytes = members[i]
            mp4 = cached(cid).read_bytes()
            samples.append((cid, _sample_members(meta_bytes, mp4, txt_bytes)))
        write_tar(shards_dir / names[n], samples)
        manifest.shards[names[n]] = hashes[n]
        manifest.save()
    log.info("wrote %d shards, %d already complete", len(to_write), len(plan) - len(to_write))

    current = set(names)
    for stale in shards_dir.glob(SHARD_GLOB):
        if stale.name not in current:
            stale.unlink()
    manifest.data["shards"] = {k: v for k, v in manifest.shards.items() if k in current}
    # keep_transcoded also keeps the clips the thresholds now drop: loosening them again decodes nothing
    # (`svp curate prune OUT` removes those).
    keep = {cid for cid in manifest.clips if cached(cid).is_file()} if cfg.keep_transcoded else set()
    for mp4 in cache_dir.glob("*.mp4"):
        if mp4.stem not in keep:
            mp4.unlink()
    manifest.data["clips"] = {k: v for k, v in manifest.clips.items() if k in specs or k in keep}
    manifest.save()

    index_rows = []
    for name, indices in zip(names, plan, strict=True):
        lengths = []
        for i in indices:
            cid, entry, meta_bytes, txt_bytes = members[i]
            lengths.append((cid, _sample_members(len(meta_bytes), entry["bytes"], len(txt_bytes))))
        for i, (offset, length) in zip(indices, tar_layout(lengths), strict=True):
            cid, entry, *_ = members[i]
            n, h, w = entry["num_frames"], entry["height"], entry["width"]
            index_rows.append(
                {
                    "shard": name,
                    "key": cid,
                    "num_frames": n,
                    "height": h,
                    "width": w,
                    "fps": cfg.fps,
                    "duration_s": n / cfg.fps,
                    "bucket": bucket_for(h, w, n).name,
                    "offset": offset,
                    "length": length,
                }
            )
    index = _index_table(index_rows)
    write_table_atomic(index, shards_dir / INDEX_FILE)
    return index.to_pandas()
