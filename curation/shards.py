"""WebDataset shards of the kept clips: deterministic, size-targeted, atomic, resumable.

`write_shards(out_dir, kept, cfg)`:
1. transcodes every kept clip that is not already transcoded with these settings into
   `OUT/shards/.transcoded/{clip_id}.mp4` (Ray tasks when Ray is initialised, serially otherwise; the bytes
   are the same either way). A clip that cannot be transcoded (broken or vanished source) is left out and
   recorded in the manifest with its reason (`transcode_failures`; the callers mark it in the clips table);
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.atomic import atomic_write_bytes
from curation.format import (
    CAPTION_MEMBER,
    FRAME_BUCKETS,
    INDEX_FILE,
    META_MEMBER,
    SHARD_GLOB,
    SHARDS_DIR,
    VIDEO_MEMBER,
    shard_name,
    validate_key,
    with_motion_score,
)
from curation.shard_index import index_table
from curation.shard_tar import TAR_BLOCK, tar_member_size, write_tar
from curation.transcode import TranscodeSettings, transcode_rows

log = logging.getLogger(__name__)

MANIFEST_FILE = ".manifest.json"
# A kept clip that could not be transcoded: `filtered_by` names this, `transcode_error` says why.
TRANSCODE_FILTER = "transcode"
TRANSCODE_ERROR = "transcode_error"
TRANSCODED_DIR = ".transcoded"


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
        text = with_motion_score(text, motion)
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


def _rows_to_shard(clips_kept: pd.DataFrame) -> list[dict]:
    """The kept clips as JSON-safe rows in clip_id order, checked for the columns and keys shards need."""
    missing_cols = {"clip_id", "uri", "start_s", "end_s"} - set(clips_kept.columns)
    if missing_cols:
        raise ValueError(f"clips to shard lack columns: {', '.join(sorted(missing_cols))}")
    drop = [c for c in ("frames", TRANSCODE_ERROR) if c in clips_kept.columns]
    table = clips_kept.drop(columns=drop)
    rows = [_json_safe(r) for r in table.sort_values("clip_id", kind="stable").to_dict("records")]
    keys = [validate_key(str(r["clip_id"])) for r in rows]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate clip ids among clips to shard: {', '.join(dupes[:5])}")
    return rows


@dataclass(frozen=True)
class _Sample:
    clip_id: str
    entry: dict  # the clip's transcode in the manifest
    meta: bytes
    caption: bytes

    def members(self, mp4: bytes) -> list[tuple[str, bytes]]:
        return _sample_members(self.meta, mp4, self.caption)

    def lengths(self) -> list[tuple[str, int]]:
        return _sample_members(len(self.meta), self.entry["bytes"], len(self.caption))

    def hash_line(self) -> bytes:
        return (
            f"{self.clip_id}|{self.entry['sha256']}|{_sha256(self.meta)}|{_sha256(self.caption)}\n".encode()
        )


@dataclass(frozen=True)
class _ShardPlan:
    samples: list[_Sample]
    shards: list[list[int]]  # sample indices of each shard
    names: list[str]
    hashes: list[str]  # what each shard holds; equal hashes mean equal bytes


class _ShardJob:
    """One `write_shards` call: transcode, plan, write, clean up (see the module docstring)."""

    def __init__(self, shards_dir: Path, cfg: ShardConfig, rows: list[dict], use_ray: bool | None):
        self.dir, self.cfg, self.rows, self.use_ray = shards_dir, cfg, rows, use_ray
        self.cache_dir = shards_dir / TRANSCODED_DIR
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for leftover in [*shards_dir.glob(".*.tmp"), *self.cache_dir.glob(".*.tmp")]:
            leftover.unlink()  # a killed run's half-written file
        settings_hash = _sha256(json.dumps(asdict(cfg.transcode_settings()), sort_keys=True).encode())[:16]
        self.manifest = _Manifest(shards_dir, settings_hash)
        self.manifest.data["config"] = cfg.model_dump(mode="json")
        self.specs = {r["clip_id"]: _spec_hash(r, settings_hash) for r in rows}
        self.failed: dict[str, str] = {}  # clip_id: why it cannot be transcoded

    def cached(self, clip_id: str) -> Path:
        return self.cache_dir / f"{clip_id}.mp4"

    def save_manifest(self) -> None:
        self.manifest.data["failed"] = dict(sorted(self.failed.items()))
        self.manifest.save()

    def transcode(self, todo: list[dict]) -> None:
        """Transcode `todo` into the cache; clips that cannot be transcoded go to `failed`, not shards."""
        for clip in transcode_rows(
            todo, self.cfg.transcode_settings(), self.cfg.clips_per_task, self.use_ray, self.failed
        ):
            atomic_write_bytes(self.cached(clip.clip_id), clip.mp4)
            self.manifest.clips[clip.clip_id] = {
                "spec": self.specs[clip.clip_id],
                "bytes": len(clip.mp4),
                "sha256": _sha256(clip.mp4),
                "num_frames": clip.num_frames,
                "height": clip.height,
                "width": clip.width,
            }
        for clip_id, reason in self.failed.items():
            log.warning("clip %s left out of the shards: %s", clip_id, reason)
        self.save_manifest()

    def not_transcoded(self) -> list[dict]:
        return [
            r
            for r in self.rows
            if self.manifest.clips.get(r["clip_id"], {}).get("spec") != self.specs[r["clip_id"]]
        ]

    def plan(self) -> _ShardPlan:
        """Samples of the transcoded clips in clip_id order, cut into shards of about the target size."""
        samples = []
        for row in self.rows:
            if row["clip_id"] in self.failed:
                continue
            entry = self.manifest.clips[row["clip_id"]]
            meta = dict(row)
            meta["shard_video"] = {k: entry[k] for k in ("num_frames", "height", "width")} | {
                "fps": self.cfg.fps
            }
            meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
            samples.append(
                _Sample(
                    row["clip_id"], entry, meta_bytes, caption_text(row, self.cfg.motion_caption).encode()
                )
            )
        sizes = [(s.clip_id, sum(tar_member_size(n) for _, n in s.lengths())) for s in samples]
        shards = _plan(sizes, self.cfg)
        hashes = []
        for indices in shards:
            h = hashlib.sha256()
            for i in indices:
                h.update(samples[i].hash_line())
            hashes.append(h.hexdigest())
        names = [shard_name(self.cfg.prefix, n) for n in range(len(shards))]
        return _ShardPlan(samples, shards, names, hashes)

    def to_write(self, plan: _ShardPlan) -> list[int]:
        """Shards whose tar is missing or holds another plan than this one."""
        return [
            n
            for n, (name, h) in enumerate(zip(plan.names, plan.hashes, strict=True))
            if not ((self.dir / name).is_file() and self.manifest.shards.get(name) == h)
        ]

    def plan_with_cached_bytes(self) -> _ShardPlan:
        """The plan, once every clip a shard to write needs is in the cache (keep_transcoded off: transcode
        again; a clip that now fails is left out and the shards are planned again without it)."""
        while True:
            plan = self.plan()
            lacking = [
                plan.samples[i]
                for n in self.to_write(plan)
                for i in plan.shards[n]
                if not (
                    self.cached(plan.samples[i].clip_id).is_file()
                    and self.cached(plan.samples[i].clip_id).stat().st_size == plan.samples[i].entry["bytes"]
                )
            ]
            if not lacking:
                return plan
            expected = {s.clip_id: s.entry["sha256"] for s in lacking}
            self.transcode([r for r in self.rows if r["clip_id"] in expected])
            changed = [
                c
                for c, sha in expected.items()
                if c not in self.failed and self.manifest.clips[c]["sha256"] != sha
            ]
            if changed:
                raise RuntimeError(
                    f"transcoding {changed[0]} again gave different bytes (encoder changed?): "
                    f"delete {self.dir} and rerun"
                )
            if not any(c in self.failed for c in expected):
                return plan

    def write(self, plan: _ShardPlan) -> None:
        to_write = self.to_write(plan)
        for n in to_write:
            samples = [plan.samples[i] for i in plan.shards[n]]
            write_tar(
                self.dir / plan.names[n],
                [(s.clip_id, s.members(self.cached(s.clip_id).read_bytes())) for s in samples],
            )
            self.manifest.shards[plan.names[n]] = plan.hashes[n]
            self.save_manifest()
        log.info("wrote %d shards, %d already complete", len(to_write), len(plan.shards) - len(to_write))

    def clean_up(self, plan: _ShardPlan) -> None:
        """Remove stale shards and cached clips no longer wanted, and forget them in the manifest."""
        current = set(plan.names)
        for stale in self.dir.glob(SHARD_GLOB):
            if stale.name not in current:
                stale.unlink()
        self.manifest.data["shards"] = {k: v for k, v in self.manifest.shards.items() if k in current}
        # keep_transcoded also keeps the clips the thresholds now drop: loosening them again decodes nothing
        # (`svp curate prune OUT` removes those).
        keep = (
            {cid for cid in self.manifest.clips if self.cached(cid).is_file()}
            if self.cfg.keep_transcoded
            else set()
        )
        for mp4 in self.cache_dir.glob("*.mp4"):
            if mp4.stem not in keep:
                mp4.unlink()
        self.manifest.data["clips"] = {
            k: v for k, v in self.manifest.clips.items() if k in self.specs or k in keep
        }
        self.save_manifest()


def write_shards(
    out_dir: str | os.PathLike, clips_kept: pd.DataFrame, cfg: ShardConfig, *, use_ray: bool | None = None
) -> pd.DataFrame:
    """Write `OUT/shards/*.tar` and `index.parquet` for `clips_kept`; returns the index.

    A clip that cannot be transcoded (a broken or vanished source) is left out of the shards and recorded in
    the manifest: `transcode_failures(out_dir)` says which and why, `mark_transcode_failures` marks them.
    When no clip at all can be transcoded, it raises and changes no shard.
    `use_ray`: transcode in Ray tasks (True), in this process (False), or on Ray if it is initialised (None).
    """
    from curation.tables import write_table_atomic

    shards_dir = Path(out_dir) / SHARDS_DIR
    job = _ShardJob(shards_dir, cfg, _rows_to_shard(clips_kept), use_ray)
    todo = job.not_transcoded()
    if todo:
        log.info("transcoding %d of %d clips", len(todo), len(job.rows))
        job.transcode(todo)
    plan = job.plan_with_cached_bytes()
    if job.rows and len(job.failed) == len(job.rows):
        # Not one bad clip but none readable: storage unmounted, sources moved. Stop before any shard goes.
        clip_id, reason = next(iter(sorted(job.failed.items())))
        raise RuntimeError(
            f"none of the {len(job.rows)} kept clips could be transcoded (sources moved or unreadable?); "
            f"first: {clip_id}: {reason}"
        )
    job.write(plan)
    job.clean_up(plan)
    index = index_table(plan.names, plan.shards, plan.samples, cfg.fps)
    write_table_atomic(index, shards_dir / INDEX_FILE)
    return index.to_pandas()


def transcode_failures(out_dir: str | os.PathLike) -> dict[str, str]:
    """{clip_id: reason} of the kept clips the last `write_shards` into `out_dir` could not transcode."""
    path = Path(out_dir) / SHARDS_DIR / MANIFEST_FILE
    return json.loads(path.read_text()).get("failed", {}) if path.is_file() else {}


def mark_transcode_failures(clips: pd.DataFrame, failures: dict[str, str]) -> pd.DataFrame:
    """A copy of `clips` (with `kept`/`filtered_by`) where the clips in `failures` are not kept, filtered by
    `transcode`, with the reason in `transcode_error` (null for every other clip)."""
    out = clips.copy()
    hit = out["clip_id"].isin(list(failures)).to_numpy()
    out[TRANSCODE_ERROR] = [failures.get(c) for c in out["clip_id"]]
    out["filtered_by"] = [
        [*f, TRANSCODE_FILTER] if h else list(f) for f, h in zip(out["filtered_by"], hit, strict=True)
    ]
    out["kept"] = out["kept"].to_numpy(dtype=bool) & ~hit
    return out
