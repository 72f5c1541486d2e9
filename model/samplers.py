"""Flow-matching samplers: Euler, DPM-Solver++(2M) and the re-noising few-step sampler, with CFG.

Every sampler integrates the probability-flow ODE dx/dσ = v(x, σ) from σ = 1 (pure noise) to σ = 0 over a
descending sigma schedule, and works with any velocity function

    v = fn(x, timesteps, text, text_mask)      # timesteps: (B,) float, 1000·σ

so the same code drives LinearDiT, a diffusers model, or an analytic field in a test. Classifier-free
guidance (`model.guidance`) batches the negative and the positive text into one call.

`block_ar_sample` runs them block by block with LinearDiT's constant-memory cache (reference notes §3.5):
each block of latent frames is denoised while attending to the cache, then folded into the cache as a clean
block (t = 0), so memory stays constant however long the video grows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from core.errors import UserError
from model.conditioning import with_clean_first_frame
from model.guidance import Field, VelocityFn, guidance_text, guided_field, split_schedule
from model.schedules import DEFAULT_INFERENCE_SHIFT, Schedule, flow_sigmas, sigmas_from_timesteps

if TYPE_CHECKING:
    from model.cache import LinearDiTCache
    from model.linear_dit import LinearDiT

# Self-Forcing/LongSANA few-step list (reference notes §3.5), in unshifted timesteps.
DEFAULT_DENOISING_STEPS = (1000.0, 960.0, 889.0, 727.0)


def _check_sigmas(sigmas: torch.Tensor) -> list[float]:
    values = [float(s) for s in torch.as_tensor(sigmas).flatten()]
    if len(values) < 2 or values[-1] != 0.0 or any(b >= a for a, b in zip(values, values[1:], strict=False)):
        raise UserError(f"sigmas must be strictly descending and end at 0, got {values}")
    if values[0] > 1.0:
        raise UserError(f"sigmas must lie in [0, 1], got a first value of {values[0]}")
    return values


def euler_steps(field: Field, x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """First-order flow Euler: x ← x + (σ_next − σ)·v."""
    for sigma, sigma_next in zip(sigmas, sigmas[1:], strict=False):
        x = x + (sigma_next - sigma) * field(x, sigma)
    return x


def _lambda(sigma: float) -> float:
    """log-SNR λ = log(α/σ) with α = 1 − σ; ±inf at the ends of the schedule."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log((1.0 - sigma) / sigma)


def dpm_solver_pp_2m_steps(field: Field, x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """DPM-Solver++(2M), data-prediction form with the midpoint update (as diffusers' default).

    The model's x0 estimate is x − σ·v (α = 1 − σ). The first step, the final step to σ = 0, and a step
    whose previous log-SNR gap is infinite (it started at σ = 1) are first order; the others use the
    previous x0 estimate for a second-order correction. (In flow coordinates the first-order update is
    exactly an Euler step, so the gain over Euler comes only from the second-order steps.)
    """
    prev_x0: torch.Tensor | None = None
    prev_lambda = -math.inf
    for sigma, sigma_next in zip(sigmas, sigmas[1:], strict=False):
        x0 = x - sigma * field(x, sigma)
        alpha_next = 1.0 - sigma_next
        lam, lam_next = _lambda(sigma), _lambda(sigma_next)
        if sigma_next == 0.0:
            x = x0
        else:
            # σ_t/σ_s·x − α_t·(e^{−h} − 1)·D, written without λ so σ_s = 1 (α_s = 0) needs no special case.
            ratio = sigma_next / sigma
            coeff = alpha_next - ratio * (1.0 - sigma)  # = −α_t·(e^{−h} − 1)
            h_prev = lam - prev_lambda
            if prev_x0 is None or math.isinf(h_prev):
                x = ratio * x + coeff * x0
            else:
                r = h_prev / (lam_next - lam)
                d1 = (x0 - prev_x0) / r
                x = ratio * x + coeff * x0 + 0.5 * coeff * d1
        prev_x0, prev_lambda = x0, lam
    return x


def renoise_steps(
    field: Field, x: torch.Tensor, sigmas: Sequence[float], generator: torch.Generator | None = None
) -> torch.Tensor:
    """The few-step sampler of Self-Forcing/LongSANA: predict x0 = x − σ·v, then re-noise it to the next
    level with fresh noise, x ← (1 − σ_next)·x0 + σ_next·ε; the last prediction is the result."""
    for sigma, sigma_next in zip(sigmas, sigmas[1:], strict=False):
        x0 = x - sigma * field(x, sigma)
        if sigma_next == 0.0:
            x = x0
        else:
            device = generator.device if generator is not None else x.device
            noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
            x = (1.0 - sigma_next) * x0 + sigma_next * noise
    return x


SAMPLERS = ("euler", "dpm++", "renoise")


def run_sampler(
    sampler: str,
    field: Field,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integrate `field` from `noise` (at sigmas[0]) to σ = 0 with the named sampler."""
    values = _check_sigmas(sigmas)
    if sampler == "euler":
        return euler_steps(field, noise, values)
    if sampler == "dpm++":
        return dpm_solver_pp_2m_steps(field, noise, values)
    if sampler == "renoise":
        return renoise_steps(field, noise, values, generator)
    raise UserError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


def sample(
    fn: VelocityFn,
    noise: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    *,
    sampler: str = "dpm++",
    steps: int = 50,
    shift: float = DEFAULT_INFERENCE_SHIFT,
    sigmas: torch.Tensor | Schedule | None = None,
    guidance_scale: float = 1.0,
    negative_text: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Denoise `noise` into a sample with the velocity function `fn`.

    The schedule is `flow_sigmas(steps, shift)` unless `sigmas` (descending, ending at 0, or a `Schedule`
    that also fixes the model's timesteps) is given. `generator` only matters for the re-noising sampler.
    """
    sigmas, timesteps = split_schedule(sigmas)
    field = guided_field(
        fn,
        text,
        text_mask,
        guidance_scale=guidance_scale,
        negative_text=negative_text,
        negative_mask=negative_mask,
        timesteps=timesteps,
    )
    schedule = flow_sigmas(steps, shift) if sigmas is None else sigmas
    return run_sampler(sampler, field, noise, schedule, generator)


def euler_sample(
    fn: VelocityFn, noise: torch.Tensor, text: torch.Tensor, text_mask=None, **kwargs
) -> torch.Tensor:
    """`sample` with the flow Euler sampler."""
    return sample(fn, noise, text, text_mask, sampler="euler", **kwargs)


def dpm_solver_pp_sample(
    fn: VelocityFn, noise: torch.Tensor, text: torch.Tensor, text_mask=None, **kwargs
) -> torch.Tensor:
    """`sample` with the DPM-Solver++(2M) sampler."""
    return sample(fn, noise, text, text_mask, sampler="dpm++", **kwargs)


# ------------------------------------------------------------------------------------ with a LinearDiT


def model_velocity(
    model: LinearDiT, cache: LinearDiTCache | None = None, frame_offset: int = 0
) -> VelocityFn:
    """A LinearDiT as a velocity function: the bidirectional forward, or with `cache` the block forward at
    `frame_offset`. Inputs are cast to the model's dtype and the velocity comes back in the latents' dtype,
    so samplers keep their state in fp32 under a bf16 model."""
    dtype = next(model.parameters()).dtype

    def fn(
        x: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        if cache is None:
            v = model(x.to(dtype), text.to(dtype), timesteps, text_mask=mask)
        else:
            v = model.forward_block(
                x.to(dtype), text.to(dtype), timesteps, cache, frame_offset, text_mask=mask
            )
        return v.to(x.dtype)

    return fn


def autoregressive_segments(num_frames: int, block_frames: int) -> list[tuple[int, int]]:
    """(start, end) latent-frame spans of the blocks: `block_frames` each, the first also takes the
    remainder (official `_create_autoregressive_segments`: 21 frames in blocks of 10 → [0, 11), [11, 21))."""
    if num_frames < 1 or block_frames < 1:
        raise UserError(f"need num_frames >= 1 and block_frames >= 1, got {num_frames}, {block_frames}")
    count = num_frames // block_frames
    if count == 0:
        return [(0, num_frames)]
    bounds = [0, block_frames + num_frames % block_frames]
    bounds += [bounds[1] + block_frames * i for i in range(1, count)]
    return list(zip(bounds, bounds[1:], strict=False))


def block_schedule(
    steps: int | None = None,
    denoising_steps: Sequence[float] = DEFAULT_DENOISING_STEPS,
    shift: float = DEFAULT_INFERENCE_SHIFT,
) -> torch.Tensor:
    """A block's noise levels: `steps` evenly spaced shifted levels, or else the few-step timestep list."""
    return flow_sigmas(steps, shift) if steps is not None else sigmas_from_timesteps(denoising_steps, shift)


@torch.no_grad()
def iter_block_ar_sample(
    model: LinearDiT,
    text: torch.Tensor,
    text_mask: torch.Tensor | None,
    num_latent_frames: int,
    block_frames: int,
    latent_hw: tuple[int, int],
    *,
    sampler: str = "renoise",
    steps: int | None = None,
    denoising_steps: Sequence[float] = DEFAULT_DENOISING_STEPS,
    shift: float = DEFAULT_INFERENCE_SHIFT,
    sigmas: torch.Tensor | Schedule | None = None,
    guidance_scale: float = 1.0,
    negative_text: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    first_frame: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """`block_ar_sample` one block at a time: yields (start, end, clean latents (B, C, end − start, H, W))
    as soon as each block is denoised and folded into the cache, so a caller can decode and write it before
    the next block starts (minute-long video without holding every latent or pixel). Same arguments, same
    random draws and so the same blocks as `block_ar_sample`. With `first_frame` (1 or B, C, 1, H, W: an
    encoded image) the first block carries it as its clean first latent frame (`with_clean_first_frame`).
    With `context` (clean latents (B, C, F0, H, W) of a given clip) the video continues it: the context is
    folded into the cache (`fold_into_cache`, no denoising) and `num_latent_frames` new frames follow,
    yielded with absolute spans from F0.
    """
    param = next(model.parameters())
    batch = text.shape[0]
    shape = (batch, model.config.in_channels, num_latent_frames, *latent_hw)
    noise = _initial_noise(shape, noise, generator, param.device)
    sigmas, timesteps = split_schedule(sigmas)
    schedule = sigmas if sigmas is not None else block_schedule(steps, denoising_steps, shift)
    cache_text, cache_mask, copies = _cache_text(
        text, text_mask, guidance_scale, negative_text, negative_mask
    )
    cache = model.new_cache(batch * copies, latent_hw=latent_hw, device=param.device)
    offset = 0
    if context is not None:
        fold_into_cache(model, context, cache_text, cache_mask, cache, block_frames)
        offset = context.shape[2]
    guidance = {"guidance_scale": guidance_scale, "negative_text": negative_text}
    guidance |= {"negative_mask": negative_mask, "timesteps": timesteps}
    for start, end in autoregressive_segments(num_latent_frames, block_frames):
        start_at, end_at = start + offset, end + offset
        first = None
        if first_frame is not None and start_at == 0:
            first = first_frame.to(param.device, torch.float32).expand(batch, -1, -1, -1, -1)
        velocity = model_velocity(model, cache, start_at)
        block = _BlockDenoiser(velocity, text, text_mask, guidance, sampler, schedule, generator)
        clean = block.denoise(noise[:, :, start:end], first)
        clean_batch = clean.repeat(copies, 1, 1, 1, 1).to(param.dtype)
        model.update_cache(clean_batch, cache_text.to(param.dtype), cache, start_at, text_mask=cache_mask)
        yield start_at, end_at, clean


def _initial_noise(
    shape: tuple[int, ...],
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """The noise of every block, drawn at once (fp32, on the generator's device) unless given."""
    if noise is None:
        noise_device = generator.device if generator is not None else device
        noise = torch.randn(shape, generator=generator, device=noise_device, dtype=torch.float32)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    return noise.to(device, torch.float32)


def _cache_text(
    text: torch.Tensor,
    text_mask: torch.Tensor | None,
    guidance_scale: float,
    negative_text: torch.Tensor | None,
    negative_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The text the cache is built with and how many copies of the batch it holds: the prompt alone, or
    with guidance the prompt and the negative text side by side (2 copies)."""
    if guidance_scale == 1.0:
        return text, text_mask, 1
    if negative_text is None:
        raise UserError(f"guidance_scale={guidance_scale} needs negative (or empty-prompt) text embeddings")
    cache_text, cache_mask = guidance_text(text, text_mask, negative_text, negative_mask)
    return cache_text, cache_mask, 2


@dataclass
class _BlockDenoiser:
    """Denoising one block of the block-autoregressive sampler against the cache the velocity reads."""

    velocity: VelocityFn
    text: torch.Tensor
    text_mask: torch.Tensor | None
    guidance: dict
    sampler: str
    schedule: torch.Tensor
    generator: torch.Generator | None

    def denoise(self, block_noise: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor:
        """Clean latents of the block; with `first` (an encoded image) it is the block's clean first frame."""
        velocity = self.velocity
        if first is not None:
            velocity, block_noise = with_clean_first_frame(velocity, first), block_noise[:, :, 1:]
        field = guided_field(velocity, self.text, self.text_mask, **self.guidance)
        clean = (
            run_sampler(self.sampler, field, block_noise, self.schedule, self.generator)
            if block_noise.shape[2]
            else block_noise
        )
        return torch.cat([first, clean], dim=2) if first is not None else clean


@torch.no_grad()
def fold_into_cache(
    model: LinearDiT,
    clean: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor | None,
    cache: LinearDiTCache,
    block_frames: int,
) -> None:
    """Fold clean latents (B, C, F, H, W) into `cache` block by block with `update_cache`, in the blocks
    generation would have made (`autoregressive_segments`), so the cache is the one the model would hold had
    it generated them itself. `text` may be a CFG batch (2B rows): the latents are repeated to match. The
    cache keeps its constant size however long the clip is."""
    param = next(model.parameters())
    copies = text.shape[0] // clean.shape[0]
    for start, end in autoregressive_segments(clean.shape[2], block_frames):
        block = clean[:, :, start:end].to(param.device).repeat(copies, 1, 1, 1, 1).to(param.dtype)
        model.update_cache(block, text.to(param.dtype), cache, cache.num_frames, text_mask=text_mask)


def block_ar_sample(
    model: LinearDiT,
    text: torch.Tensor,
    text_mask: torch.Tensor | None,
    num_latent_frames: int,
    block_frames: int,
    latent_hw: tuple[int, int],
    *,
    sampler: str = "renoise",
    steps: int | None = None,
    denoising_steps: Sequence[float] = DEFAULT_DENOISING_STEPS,
    shift: float = DEFAULT_INFERENCE_SHIFT,
    sigmas: torch.Tensor | Schedule | None = None,
    guidance_scale: float = 1.0,
    negative_text: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    first_frame: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate latents (B, C, F, H, W) block by block with the constant-memory cache.

    For each block (`autoregressive_segments`): start from its slice of the initial noise, denoise it with
    `sampler` over the block schedule while attending to the cache (`forward_block`), then fold the clean
    block into the cache (`update_cache`, t = 0). The default is the LongSANA loop: the re-noising sampler
    over the timesteps [1000, 960, 889, 727]; `steps` (or `sigmas`) selects an even shifted schedule
    instead, e.g. with `sampler="dpm++"` for a model that was not distilled to few steps. With CFG the
    negative and positive branches share one cache of batch 2B. The initial noise is drawn for the whole
    video up front (or passed as `noise`), so a seed gives the same starting point as the bidirectional
    sampler.
    """
    blocks = iter_block_ar_sample(
        model,
        text,
        text_mask,
        num_latent_frames,
        block_frames,
        latent_hw,
        sampler=sampler,
        steps=steps,
        denoising_steps=denoising_steps,
        shift=shift,
        sigmas=sigmas,
        guidance_scale=guidance_scale,
        negative_text=negative_text,
        negative_mask=negative_mask,
        generator=generator,
        noise=noise,
        first_frame=first_frame,
        context=context,
    )
    return torch.cat([clean for _, _, clean in blocks], dim=2)
