"""The pydantic models of a training pipeline: one `StageConfig` per stage, a `PipelineConfig` around them.

Every model forbids unknown keys, so a typo in a YAML file is an error that names the key instead of a
setting silently ignored. Checks that need more than one field (shapes against the model's strides,
`init_from` naming an earlier stage) live in `training.config.checks`, which reports the exact key.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, field_validator, model_validator
from pydantic.dataclasses import dataclass

from core.digest import digest
from core.errors import UserError
from curation.format import Bucket, validate_key


def _safe_name(name: str) -> str:
    try:
        return validate_key(name)
    except ValueError:
        raise UserError(f"{name!r} must be 1-128 characters from [A-Za-z0-9_-]") from None


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BucketConfig(StrictModel):
    """One (resolution, frames) bucket and the per-rank batch size for it."""

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    num_frames: int = Field(gt=0)
    batch_size: int = Field(gt=0)

    @property
    def bucket(self) -> Bucket:
        return Bucket(self.height, self.width, self.num_frames)

    @property
    def name(self) -> str:
        return self.bucket.name


class AutoencoderSpec(StrictModel):
    name: str = Field(min_length=1)
    path: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class TextEncoderSpec(StrictModel):
    name: str = Field(min_length=1)
    path: str | None = None
    max_length: int = Field(default=300, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(StrictModel):
    preset: str = Field(min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)


class FlowConfig(StrictModel):
    """Training-time sigma sampling: logit-normal, then shifted (SANA-Video trains with shift 3)."""

    shift: float = Field(default=3.0, gt=0)
    logit_mean: float = 0.0
    logit_std: float = Field(default=1.0, gt=0)


class OptimizerConfig(StrictModel):
    """AdamW with a linear warm-up to `lr`, then constant (the schedule of every released SANA config)."""

    lr: float = Field(gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    # torch's fused AdamW (one multi-tensor kernel per step instead of a loop of element-wise ops); "auto":
    # on GPU workers. Same update up to rounding.
    fused: Literal["auto"] | bool = "auto"

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise UserError(f"each beta must be in [0, 1), got {list(betas)}")
        return betas

    def fused_enabled(self, use_gpu: bool) -> bool:
        return use_gpu if self.fused == "auto" else bool(self.fused)


class CheckpointSpec(StrictModel):
    every: int = Field(gt=0)
    keep_last: int = Field(default=2, gt=0)


class Float8TrainingSpec(StrictModel):
    """Float8 matmuls in training through torchao (`training.worker.float8`): the blocks' attention projections and
    Mix-FFN 1×1 convs; the patch embedding, the conditioning embedders, the output projection and GEMMs with a
    dimension below `min_dim` (or not a multiple of 16) stay in the stage's precision."""

    enabled: bool = False
    # rowwise: per-row scales (torchtitan's recipe, closer to bf16); tensorwise: one scale per tensor (faster).
    recipe: Literal["rowwise", "tensorwise"] = "rowwise"
    min_dim: int = Field(default=256, ge=16)


class DeepSpeedSpec(StrictModel):
    zero_stage: Literal[0, 1, 2, 3] = 2
    # "auto": bf16 on GPU, fp32 on CPU (CPU runs are the test path and must stay exact).
    bf16: Literal["auto"] | bool = "auto"
    activation_checkpointing: bool = False
    # Share of the blocks recomputed when activation_checkpointing is on (the first ones); below 1 keeps the
    # rest's activations: less recompute, more memory (480p on one 80 GB H100: see docs/benchmarks.md).
    checkpoint_fraction: float = Field(default=1.0, ge=0.0, le=1.0)
    # torch.compile each transformer block on GPU (CPU workers stay eager).
    compile_blocks: bool = False
    # With compile_blocks: share of a non-checkpointed block's activations kept (the compiler recomputes the
    # cheapest ops for the rest).
    compile_memory_budget: float = Field(default=1.0, ge=0.0, le=1.0)
    # The linear-attention core's fused Triton backward on GPU (the PyTorch path when off; CPU workers always).
    fused_attention_backward: bool = True
    # GPU workers need compute capability 8.9+ (L4, H100); CPU workers emulate the float8 matmuls.
    float8: Float8TrainingSpec = Field(default_factory=Float8TrainingSpec)

    @field_validator("bf16", mode="before")
    @classmethod
    def _bf16_value(cls, value: Any) -> Any:
        # Checked here so a bad value gives one message instead of one per member of the union.
        if value == "auto" or isinstance(value, bool):
            return value
        raise UserError(f"must be 'auto', true or false, got {value!r}")

    def bf16_enabled(self, use_gpu: bool) -> bool:
        return use_gpu if self.bf16 == "auto" else bool(self.bf16)


class InitFromSpec(StrictModel):
    """Weights-only start of a stage: the previous stage's export (`stage`) or a folder/file (`path`)."""

    stage: str | None = None
    path: str | None = None
    drop_keys: list[str] = Field(default_factory=list)
    reinit_keys: list[str] = Field(default_factory=list)
    pad_ffn: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> InitFromSpec:
        if (self.stage is None) == (self.path is None):
            raise UserError("give exactly one of 'stage' or 'path'")
        return self


class EmaSpec(StrictModel):
    decay: float = Field(gt=0, lt=1)
    update_every: int = Field(default=1, gt=0)


class SampleSpec(StrictModel):
    """A short sample video rendered every `every` steps (at the stage's first bucket size)."""

    every: int = Field(gt=0)
    prompt: str = Field(min_length=1)
    num_frames: int = Field(gt=0)
    steps: int = Field(default=20, gt=0)


class EvalSpec(StrictModel):
    """`eval:` of a stage: after the stage exports, videos of fixed prompts and seeds are generated from the
    export and scored (`training.inference.evaluation`, `curation.video_eval`); the metrics land in the stage's
    MLflow run at the export's step. With `every: N` the same videos are also generated and scored during
    training with the live weights at every step that is a multiple of N but not the last (the export's
    evaluation covers that), the prompts and seeds shared between the ranks (`training.worker.live_eval`).
    `image` starts every video from an image (image-to-video, `conditioning_match`); `video` continues a
    clip instead (`continuation_match`), block by block as `svp generate --continue` does. Not part of the
    stage's fingerprint: changing it never retrains the stage."""

    prompts: list[str] = Field(default_factory=list)
    prompts_file: str | None = None  # one prompt a line; blank lines and `#` comments are skipped
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    num_frames: int | None = Field(default=None, gt=0)  # default: the stage's first bucket
    steps: int = Field(default=10, gt=0)
    guidance_scale: float = 6.0
    image: str | None = None  # image-to-video: every video starts from this image
    video: str | None = None  # continuation: every video continues this clip (mp4)
    every: int | None = Field(
        default=None, gt=0
    )  # also during training, every N steps (None: at export only)
    clip_model: str = "ViT-L-14-quickgelu"  # curation.clip_model's default architecture
    clip_checkpoint: str | None = None  # without it the CLIP metrics are skipped with one line
    aesthetic_mlp: str | None = None
    device: str = "auto"

    @model_validator(mode="after")
    def _some_prompt(self) -> EvalSpec:
        if not self.prompts and self.prompts_file is None:
            raise UserError("needs prompts (a list) or prompts_file")
        if self.image is not None and self.video is not None:
            raise UserError("image and video cannot be combined: a continuation starts from its clip")
        return self


@dataclass(config=ConfigDict(extra="forbid"), frozen=True, kw_only=True)
class StageConfig:
    """One training stage. A pydantic dataclass rather than a BaseModel because the interface's
    `model_config()` method would collide with pydantic's reserved `BaseModel.model_config`."""

    name: str
    data: list[str] = Field(min_length=1)
    kind: Literal["image", "video"]
    buckets: list[BucketConfig] = Field(min_length=1)
    target_fps: float | None = Field(default=None, gt=0)
    autoencoder: AutoencoderSpec
    text_encoder: TextEncoderSpec
    model: ModelSpec
    chunk_sizes: list[int] | None = None
    chunk_sigma_strategy: Literal["uniform", "incremental"] = "uniform"
    # Joint image-to-video training (official `ltx_image_condition_prob`): per sample, with this probability
    # the first latent frame stays clean (timestep 0) and is left out of the loss.
    image_condition_prob: float = Field(default=0.0, ge=0, le=1)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    caption_dropout: float = Field(default=0.1, ge=0, le=1)
    optimizer: OptimizerConfig
    steps: int = Field(gt=0)
    checkpoint: CheckpointSpec
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    init_from: InitFromSpec | None = None
    ema: EmaSpec | None = None
    sample: SampleSpec | None = None
    eval: EvalSpec | None = None
    seed: int = Field(default=0, ge=0)
    num_workers: int = Field(default=2, ge=0)
    # Precomputed latents (`svp encode`): auto uses them when every data folder has a current set, required
    # fails without them, off always encodes clips while training.
    latents: Literal["auto", "required", "off"] = "auto"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        # Stage names become Ray run names and folder names.
        return _safe_name(name)

    @field_validator("chunk_sizes")
    @classmethod
    def _positive_chunks(cls, chunks: list[int] | None) -> list[int] | None:
        if chunks is not None and (not chunks or min(chunks) < 1):
            raise UserError(f"must be a non-empty list of positive latent-frame counts, got {chunks}")
        return chunks

    @model_validator(mode="after")
    def _image_condition_needs_video(self) -> StageConfig:
        # One-frame samples would have nothing left to train on.
        if self.image_condition_prob > 0 and self.kind == "image":
            raise UserError(
                "image_condition_prob needs a video stage (kind: video), this stage is kind: image"
            )
        return self

    @field_validator("buckets")
    @classmethod
    def _unique_buckets(cls, buckets: list[BucketConfig]) -> list[BucketConfig]:
        names = [b.name for b in buckets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UserError(f"duplicate bucket {', '.join(duplicates)}")
        return buckets

    # ---- derived views used by the training loop -------------------------------------------------------

    def model_config(self) -> Any:
        """The `model.config.LinearDiTConfig` of this stage (preset + overrides; activation checkpointing
        from the DeepSpeed section)."""
        from model.config import LinearDiTConfig

        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in self.model.overrides.items()}
        overrides.setdefault("gradient_checkpointing", self.deepspeed.activation_checkpointing)
        overrides.setdefault("checkpoint_fraction", self.deepspeed.checkpoint_fraction)
        overrides.setdefault("compile_blocks", self.deepspeed.compile_blocks)
        overrides.setdefault("compile_memory_budget", self.deepspeed.compile_memory_budget)
        overrides.setdefault("fused_attention_backward", self.deepspeed.fused_attention_backward)
        return LinearDiTConfig.from_preset(self.model.preset, **overrides)

    def resolved(self) -> dict[str, Any]:
        """The stage as plain JSON-safe data (what the MLflow params are made of). A stage without `eval:`
        resolves as it did before the block existed, so its fingerprint is unchanged."""
        data = _STAGE_ADAPTER.dump_python(self, mode="json")
        if data.get("eval") is None:
            data.pop("eval", None)
        return data

    def training_inputs(self) -> dict[str, Any]:
        """`resolved()` without what does not change the trained weights (`eval:`): the fingerprint's part."""
        data = self.resolved()
        data.pop("eval", None)
        return data

    def replace(self, **changes: Any) -> StageConfig:
        """A validated copy with some top-level fields changed (e.g. `steps=3`)."""
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> str:
        return digest(self.training_inputs())

    def to_flat_params(self) -> dict[str, str]:
        """Dotted keys → strings, e.g. {"optimizer.lr": "5e-05", "buckets.0.height": "256"} (for MLflow)."""
        return flatten(self.resolved())


_STAGE_ADAPTER = TypeAdapter(StageConfig)


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(value, dict) and value:
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list) and value and any(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}.{i}"))
    else:
        out[prefix] = value if isinstance(value, str) else json.dumps(value)
    return out


class PipelineConfig(StrictModel):
    name: str
    stages: list[StageConfig] = Field(min_length=1)
    work_dir: str | None = None
    # Where the file came from, for messages (not part of the YAML).
    _source: str = PrivateAttr(default="<memory>")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return _safe_name(name)

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise UserError(f"{self._source}: no stage named {name!r}; stages: {', '.join(self.stage_names)}")

    @property
    def source(self) -> str:
        return self._source

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]
