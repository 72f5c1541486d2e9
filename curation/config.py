"""`CurationConfig`: every knob of a curation run, loaded from YAML and validated by pydantic.

Unknown keys and bad values are errors that name the key and the file. The scorer, caption and shard
sections are the models of the modules that use them; thresholds live in their own file (`thresholds.yaml`,
see `curation.thresholds`) because they are applied after scoring and can change without re-running it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.config_paths import resolve_config_paths
from core.digest import digest
from core.errors import UserError
from core.yaml_files import load_yaml_model, validate_mapping
from curation.aesthetic import AestheticConfig
from curation.captions import CaptionConfig
from curation.shards import ShardConfig

VIDEO_EXTENSIONS = (
    ".mp4",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".ts",
    ".flv",
    ".wmv",
    ".3gp",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectorConfig(_Strict):
    """One PySceneDetect detector; cuts of several detectors are merged."""

    kind: Literal["content", "adaptive"] = "adaptive"
    threshold: float = Field(27.0, gt=0, description="content: mean HSV change that makes a cut")
    adaptive_threshold: float = Field(3.0, gt=0, description="adaptive: ratio to the rolling mean")
    window_width: int = Field(2, ge=1, description="adaptive: frames on each side of the rolling window")
    min_content_val: float = Field(15.0, ge=0, description="adaptive: minimum content change for a cut")
    min_scene_len_s: float = Field(0.6, ge=0, description="no two cuts closer than this")
    luma_only: bool = False


class SceneConfig(_Strict):
    detectors: list[DetectorConfig] = Field(default_factory=lambda: [DetectorConfig()], min_length=1)
    detect_width: int = Field(64, ge=16, description="frames are shrunk to this width before detection")
    min_clip_s: float = Field(2.0, gt=0)
    max_clip_s: float = Field(10.0, gt=0, description="longer scenes are split into windows this long")
    trim_s: float = Field(0.1, ge=0, description="dropped at both sides of every cut (transition frames)")

    @model_validator(mode="after")
    def _lengths(self) -> SceneConfig:
        if self.max_clip_s < self.min_clip_s:
            raise UserError(f"max_clip_s ({self.max_clip_s}) must be >= min_clip_s ({self.min_clip_s})")
        return self


class MotionConfig(_Strict):
    short_side: int = Field(96, ge=16, description="flow is computed at this short side (no upscaling)")
    pairs_per_s: float = Field(2.0, gt=0, description="frame pairs sampled per second of video")
    pair_gap_s: float = Field(1 / 30, gt=0, description="time between the two frames of a pair")
    codec_mvs: bool = Field(False, description="also score the codec's motion vectors (motion_mv_score)")


class ProbeConfig(_Strict):
    max_side: int = Field(8192, ge=16, description="frames wider or taller than this are absurd")
    min_side: int = Field(32, ge=2, description="frames narrower or shorter than this are absurd")
    max_aspect: float = Field(8.0, ge=1, description="long side / short side above this is absurd")
    min_duration_s: float | None = Field(None, description="default: scenes.min_clip_s")


class RayConfig(_Strict):
    decode_concurrency: int | None = Field(None, ge=1, description="max parallel decode tasks (None: auto)")
    scorer_concurrency: int = Field(1, ge=1, description="actors per scorer stage (at least)")
    scorer_max_concurrency: int | None = Field(
        None, ge=1, description="let Ray Data grow each scorer pool up to this many actors under load"
    )
    stage_actors: dict[Literal["aesthetic", "caption"], int] = Field(
        default_factory=dict,
        description="actors of one scorer stage, by name, in place of scorer_concurrency: the captioner sets "
        "the pace (one H100: busy 89% of the pass, the GPU 21%), so give it more, e.g. {caption: 3}",
    )
    scorer_batch_size: int = Field(16, ge=1)
    gpus_per_scorer: float | None = Field(
        None,
        gt=0,
        le=8,
        description="used only when the cluster has GPUs (None: the GPUs shared by all scorers)",
    )
    cpus_per_scorer: float | None = Field(
        None, gt=0, description="None: 1, or less where the cluster would keep no CPU for a decoder"
    )
    max_retries: int = Field(2, ge=0, description="retries of a source whose worker crashed")
    max_consecutive_stage_failures: int = Field(
        3,
        ge=1,
        description="stop the job when a scorer stage fails this many batches in a row (a bug, not data)",
    )
    runtime_env: dict | None = Field(None, description="Ray runtime_env of the job's tasks and actors")

    @model_validator(mode="after")
    def _pool(self) -> RayConfig:
        if self.scorer_max_concurrency is not None and self.scorer_max_concurrency < self.scorer_concurrency:
            raise UserError("scorer_max_concurrency must be >= scorer_concurrency")
        for name, count in self.stage_actors.items():
            if count < 1:
                raise UserError(f"stage_actors.{name}: must be >= 1, got {count}")
        return self

    def actors_of(self, stage: str) -> tuple[int, int]:
        """(min, max) actors of the scorer stage `stage`'s pool."""
        if stage in self.stage_actors:
            return self.stage_actors[stage], max(self.stage_actors[stage], self.scorer_max_concurrency or 0)
        return self.scorer_concurrency, self.scorer_max_concurrency or self.scorer_concurrency


class CurationConfig(_Strict):
    extensions: list[str] = Field(default_factory=lambda: list(VIDEO_EXTENSIONS))
    scenes: SceneConfig = Field(default_factory=SceneConfig)
    motion: MotionConfig = Field(default_factory=MotionConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    scorer_short_side: int = Field(224, ge=16, description="short side of the frames handed to scorers")
    frames_per_clip: int = Field(4, ge=1, le=64, description="frames sampled evenly in each clip for scorers")
    decode_threads: int = Field(1, ge=0, description="decoder threads per task (0: auto)")
    aesthetic: AestheticConfig = Field(default_factory=AestheticConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    shards: ShardConfig = Field(default_factory=ShardConfig)
    thresholds_file: str | None = Field(None, description="thresholds YAML; default thresholds when unset")
    ray: RayConfig = Field(default_factory=RayConfig)

    @property
    def min_duration_s(self) -> float:
        given = self.probe.min_duration_s
        return self.scenes.min_clip_s if given is None else given

    def scoring_fingerprint(self) -> str:
        """Hash of every setting that changes per-source results (clips and scores), so a resumed run
        never mixes results of two configurations. Shards and thresholds are applied after and excluded."""
        relevant = self.model_dump(mode="json", exclude={"shards", "thresholds_file", "ray"})
        return digest(relevant)


# Paths a curation config may name, relative to the config file (`core.config_paths`).
CONFIG_PATH_KEYS = (
    "thresholds_file",
    "aesthetic.mlp_checkpoint",
    "aesthetic.clip_checkpoint",
    "caption.clip_checkpoint",
    "caption.vlm_path",
)


def load_config(
    path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None
) -> CurationConfig:
    """Load a YAML config (or the defaults), then set dotted keys such as `{"scenes.min_clip_s": 1.5}`
    (`svp curate --set`, `--min-clip-s`; None values are skipped); an unknown key names the valid ones."""
    given = {dotted: value for dotted, value in (overrides or {}).items() if value is not None}
    if path is None:
        return validate_mapping({}, CurationConfig, "config", given)
    base = Path(path).resolve().parent
    return load_yaml_model(
        path,
        CurationConfig,
        given,
        what="curation config",
        prepare=lambda raw: resolve_config_paths(raw, CONFIG_PATH_KEYS, base),
    )
