"""The math of one training step, independent of Ray: encoders, noising, loss, the DeepSpeed engine.

Used by the Ray Train worker loop (`training.worker.worker`) and by `benchmarks/train_step.py`, so the benchmark
measures exactly the step that training runs.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import torch

from core.errors import UserError

if TYPE_CHECKING:
    from training.config import StageConfig


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator of every random draw of one rank's step (CPU, so results do not depend on the device)."""
    digest = hashlib.sha256(f"{seed}:{rank}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class StageStep:
    """The encoders and the per-step math of one stage, independent of Ray (also used by the benchmark).

    The autoencoder and text encoder are built on first use: a stage trained on precomputed latents
    (`batch.encoded`) never builds them (sample rendering still does, when the stage renders samples).
    """

    def __init__(self, stage: StageConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.stage = stage
        self.device = device
        self.dtype = dtype
        self._autoencoder = None
        self._text_encoder = None
        self.model_config = stage.model_config()

    @property
    def autoencoder(self) -> Any:
        if self._autoencoder is None:
            self._autoencoder = build_stage_autoencoder(self.stage, self.device)
        return self._autoencoder

    @property
    def text_encoder(self) -> Any:
        if self._text_encoder is None:
            self._text_encoder = build_stage_text_encoder(self.stage, self.device)
        return self._text_encoder

    def encode(self, batch: Any, generator: torch.Generator):
        """Latents (B, C, F, H, W) and text (embeddings, mask) of a `training.data.stage_data.Batch`, with caption
        dropout → empty caption: encoded here from `batch.video`/`batch.captions`, or taken from the
        precomputed `batch.encoded` (the empty caption's precomputed embedding for dropped captions). The
        dropout draw comes first either way, so both paths consume the generator alike."""
        drop = torch.rand(len(batch.captions), generator=generator) < self.stage.caption_dropout
        if batch.encoded is not None:
            return self._precomputed(batch.encoded, drop)
        captions = ["" if d else c for c, d in zip(batch.captions, drop.tolist(), strict=True)]
        with torch.no_grad():
            latents = self.autoencoder.encode(batch.video.to(self.device, torch.float32))
            text, mask = self.text_encoder.encode(captions)
        return latents.float(), text.to(self.device, self.dtype), mask.to(self.device)

    def _precomputed(self, encoded: Any, drop: torch.Tensor):
        keep = ~drop.view(-1, 1, 1)
        text = torch.where(keep, encoded.text, encoded.empty_text.unsqueeze(0))
        mask = torch.where(keep[:, :, 0], encoded.mask, encoded.empty_mask.unsqueeze(0))
        latents = encoded.latents.to(self.device, torch.float32, non_blocking=True)
        return latents, text.to(self.device, self.dtype, non_blocking=True), mask.to(self.device)

    def noise(self, latents: torch.Tensor, generator: torch.Generator):
        return noise_latents(self.stage, latents, generator, self.dtype)

    def flops_and_tokens(self, latents: torch.Tensor, text_len: int) -> tuple[float, float]:
        return step_flops_and_tokens(self.model_config, tuple(latents.shape), text_len)


def build_stage_autoencoder(
    stage: StageConfig, device: torch.device, dtype: torch.dtype = torch.float32
) -> Any:
    """The stage's autoencoder (`model.autoencoders`), as the trainer and `svp encode` build it."""
    from model.autoencoders import build_autoencoder

    spec = stage.autoencoder
    return build_autoencoder(spec.name, spec.path, device=device, dtype=dtype, **spec.options)


def build_stage_text_encoder(
    stage: StageConfig, device: torch.device, dtype: torch.dtype = torch.float32
) -> Any:
    """The stage's text encoder (`model.text_encoders`), as the trainer and `svp encode` build it."""
    from model.text_encoders import build_text_encoder

    spec = stage.text_encoder
    options = dict(spec.options)
    options.setdefault("max_length", spec.max_length)
    return build_text_encoder(spec.name, spec.path, device=device, dtype=dtype, **options)


def noise_latents(stage: StageConfig, latents: torch.Tensor, generator: torch.Generator, dtype: torch.dtype):
    """(noisy latents in `dtype`, timesteps, noise, loss weights or None): per-sample σ, or per-chunk σ for
    block-causal stages; with `image_condition_prob`, image-conditioned samples (`condition_first_frame`)."""
    from model.flow import add_noise, sample_chunk_sigmas, sample_sigmas, sigma_to_timestep

    flow, batch = stage.flow, latents.shape[0]
    if stage.chunk_sizes:
        sigma = sample_chunk_sigmas(
            batch,
            stage.chunk_sizes,
            stage.chunk_sigma_strategy,
            generator,
            flow.logit_mean,
            flow.logit_std,
            flow.shift,
        )
    else:
        sigma = sample_sigmas(batch, generator, flow.logit_mean, flow.logit_std, flow.shift)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    weights = None
    if stage.image_condition_prob > 0:  # drawn only then, so other stages keep their random stream
        sigma, weights = condition_first_frame(sigma, latents.shape[2], stage.image_condition_prob, generator)
        weights = weights.to(latents.device)
    sigma = sigma.to(latents.device)
    return add_noise(latents, noise, sigma).to(dtype), sigma_to_timestep(sigma), noise, weights


def condition_first_frame(
    sigma: torch.Tensor, frames: int, prob: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-to-video training: each sample, with probability `prob`, keeps its first latent frame clean.

    Returns per-frame σ (B, F) with 0 on the conditioned first frames (so the model is fed exactly the clean
    latent at timestep 0, as at image-to-video inference) and per-frame loss weights (B, F) with 0 there.
    """
    batch = sigma.shape[0]
    per_frame = sigma.reshape(batch, 1).expand(batch, frames) if sigma.ndim == 1 else sigma
    conditioned = torch.rand(batch, generator=generator) < prob
    keep = torch.ones(batch, frames)
    keep[:, 0] = (~conditioned).float()
    return per_frame * keep.to(per_frame), keep


def step_flops_and_tokens(
    model_config: Any, latent_shape: tuple[int, ...], text_len: int
) -> tuple[float, float]:
    """Model FLOPs of one training step (forward + backward = 3 × forward) and latent tokens of a batch."""
    from model.info import forward_flops

    batch, _, frames, height, width = latent_shape
    pt, ph, pw = model_config.patch_size
    tokens = batch * (frames // pt) * (height // ph) * (width // pw)
    return 3.0 * batch * forward_flops(model_config, tuple(latent_shape[1:]), text_len), float(tokens)


def forward_loss(
    engine: Any, stage: StageConfig, latents, noisy, text, mask, timesteps, noise, weights=None
) -> torch.Tensor:
    """Flow-matching loss of one batch (block-causal when the stage has `chunk_sizes`); `weights` (B, F)
    leave conditioning frames out."""
    from model.flow import flow_matching_loss

    prediction = engine(noisy, text, timesteps, text_mask=mask, chunk_sizes=stage.chunk_sizes)
    return flow_matching_loss(prediction, latents, noise, weights)


def deepspeed_config(stage: StageConfig, world_size: int, use_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config dict of `stage` for `deepspeed.initialize`.

    The micro-batch is the largest bucket's batch size: with bucketed batches the real batch varies per
    step, and DeepSpeed only uses this number for bookkeeping (the loss is a mean per batch).
    `torch_adam` uses torch's AdamW instead of DeepSpeed's fused op, which would be JIT-compiled on first
    use (and cannot be on a CPU-only machine).
    """
    if world_size < 1:
        raise UserError(f"world_size must be >= 1, got {world_size}")
    opt = stage.optimizer
    micro = max(b.batch_size for b in stage.buckets)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro * world_size,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": opt.lr,
                "betas": list(opt.betas),
                "eps": opt.eps,
                "weight_decay": opt.weight_decay,
                "torch_adam": True,
            },
        },
        "zero_optimization": {"stage": stage.deepspeed.zero_stage},
        "bf16": {"enabled": stage.deepspeed.bf16_enabled(use_gpu)},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if opt.grad_clip is not None:
        config["gradient_clipping"] = opt.grad_clip
    if opt.warmup_steps > 0:
        # WarmupLR rises linearly to `lr` and then stays there: warm-up then constant.
        config["scheduler"] = {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": opt.lr,
                "warmup_num_steps": opt.warmup_steps,
                "warmup_type": "linear",
            },
        }
    return config


def build_engine(stage: StageConfig, model: torch.nn.Module, world_size: int, use_gpu: bool, universal: bool):
    import deepspeed

    config = deepspeed_config(stage, world_size, use_gpu)
    if stage.optimizer.fused_enabled(use_gpu):
        # DeepSpeed hands extra params to torch.optim.AdamW (its `torch_adam` path): torch's fused kernel.
        config["optimizer"]["params"]["fused"] = True
    if universal:
        config["checkpoint"] = {"load_universal": True}
    if stage.deepspeed.float8.enabled:
        from training.worker.float8 import convert_to_float8

        convert_to_float8(model, stage.deepspeed.float8, use_gpu)  # before DeepSpeed wraps and compiles it
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=config)
    return engine


def guarded_step(
    engine: Any,
    step_math: StageStep,
    batch: Any,
    generator: torch.Generator,
    data_wait_s: float = 0.0,
) -> tuple[Any, bool]:
    """One optimizer step on a `training.data.stage_data.Batch`, skipped on every rank when any rank's loss is NaN/inf.

    Returns the step's totals summed over ranks (`training.tracking.metrics.StepTotals`, still on the device) and
    whether the step was applied. One all-reduce carries the loss, the non-finite flag and the throughput
    counters together; the host reads none of them here (`training.tracking.metrics.StepWindow` does, every
    `log_every` steps).

    The skip is decided on the device: when any rank's loss is not finite, every rank back-propagates its
    loss times NaN, so every gradient is NaN, and DeepSpeed's ZeRO-1/2 optimizer, which checks the global
    gradient norm before each update anyway (fp32 always, bf16 with `check_grad_overflow`, its default),
    skips the update on every rank: weights, optimizer state and learning-rate schedule stay as they were
    (DeepSpeed counts it in `engine.skipped_steps`). That check is DeepSpeed's one host read per step; this
    function adds none. Without a ZeRO optimizer (stage 0) nothing would catch the NaN, so there the flag is
    read on the host before the backward pass (one sync per step, stage 0 only).
    """
    from training.tracking.metrics import StepTotals

    latents, text, mask = step_math.encode(batch, generator)
    noisy, timesteps, noise, weights = step_math.noise(latents, generator)
    flops, tokens = step_math.flops_and_tokens(latents, text.shape[1])
    loss = forward_loss(engine, step_math.stage, latents, noisy, text, mask, timesteps, noise, weights)
    local = StepTotals.local(loss, latents.shape[0], tokens, flops, data_wait_s)
    totals = StepTotals.all_reduce(local, step_math.device)
    skip = totals.nonfinite > 0
    if not _skips_nonfinite_updates(engine):
        if bool(skip):  # host read: stage 0 only (see the docstring)
            return totals, False  # the autograd graph is dropped with `loss`; no gradient was produced
        engine.backward(loss)
        engine.step()
        return totals, True
    poison = torch.where(skip, torch.full_like(loss, float("nan")), torch.ones_like(loss))
    engine.backward(loss * poison.detach())
    engine.step()
    return totals, bool(engine.was_step_applied())


def _skips_nonfinite_updates(engine: Any) -> bool:
    """Whether DeepSpeed's optimizer skips an update whose gradients are not finite (ZeRO-1/2: fp32 through
    the gradient norm it computes, bf16 with `check_grad_overflow`; see guarded_step)."""
    if engine.zero_optimization_stage() not in (1, 2):
        return False
    if engine.bfloat16_enabled():
        return bool(engine._config.bfloat16_config.check_grad_overflow)  # noqa: SLF001
    return engine.fp16_enabled() or bool(engine.zero_compute_grad_norm())
