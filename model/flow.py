"""Rectified flow matching: noising, the velocity target, timestep sampling and the loss.

Conventions (SANA-Video, reference notes §4): σ ∈ [0, 1] is the noise level, x_σ = (1−σ)·x0 + σ·ε, the
model predicts the velocity v = ε − x0, and it is fed the timestep 1000·σ. Training samples σ from a
logit-normal distribution and then applies the flow shift s: σ' = sσ / (1 + (s−1)σ), which moves mass
towards high noise (s = 3 for training, 8 for inference).

A training step is: `sigma = sample_sigmas(...)` (or `sample_chunk_sigmas` for block-AR training) →
`x_t = add_noise(x0, noise, sigma)` → `v = model(x_t, text, sigma_to_timestep(sigma), ...)` →
`flow_matching_loss(v, x0, noise)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.errors import UserError

NUM_TRAIN_TIMESTEPS = 1000
CHUNK_STRATEGIES = ("uniform", "incremental")


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow velocity target, d x_σ / dσ = noise − x0."""
    return noise - x0


# JiT clips σ at 0.05 in x0 → v's denominator: near σ = 0 that velocity is ill-conditioned.
SAMPLE_PREDICTION_MIN_SIGMA = 0.05


def velocity_from_sample(
    noisy: torch.Tensor, x0: torch.Tensor, timesteps: torch.Tensor | float
) -> torch.Tensor:
    """The velocity (x_σ − x0)/σ of a clean-sample prediction `x0` at model timesteps 1000·σ (scalar, (B,)
    or (B, F)); σ is clipped below at `SAMPLE_PREDICTION_MIN_SIGMA`. A sampler's data prediction x_σ − σ·v
    gives back `x0` exactly wherever σ is above the clip."""
    sigma = expand_per_frame(torch.as_tensor(timesteps) / NUM_TRAIN_TIMESTEPS, noisy, "timesteps")
    return (noisy - x0) / sigma.clamp(min=SAMPLE_PREDICTION_MIN_SIGMA)


def expand_per_frame(sigma: torch.Tensor | float, like: torch.Tensor, name: str = "sigma") -> torch.Tensor:
    """Broadcast a noise level (or a weight) to a latent video (B, C, F, H, W).

    It may be a scalar, per sample (B,), or per latent frame (B, F); per-frame values land on the frame axis.
    """
    sigma = torch.as_tensor(sigma, device=like.device, dtype=like.dtype)
    if sigma.ndim == 0:
        return sigma
    if like.ndim != 5:
        raise ValueError(f"latents must be (B, C, F, H, W), got shape {tuple(like.shape)}")
    batch, _, frames = like.shape[:3]
    if sigma.ndim == 1 and sigma.shape[0] == batch:
        return sigma.view(batch, 1, 1, 1, 1)
    if sigma.ndim == 2 and sigma.shape == (batch, frames):
        return sigma.view(batch, 1, frames, 1, 1)
    raise ValueError(
        f"{name} must be a scalar, (B,) or (B, F) = ({batch},) or ({batch}, {frames}); got {tuple(sigma.shape)}"
    )


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x_σ = (1−σ)·x0 + σ·noise, σ per sample (B,) or per latent frame (B, F)."""
    s = expand_per_frame(sigma, x0)
    return (1 - s) * x0 + s * noise


def shift_sigma(sigma: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """The flow shift σ' = sσ / (1 + (s−1)σ); s = 1 is the identity, s > 1 spends more time at high noise."""
    if shift <= 0:
        raise UserError(f"flow shift must be > 0, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def sigma_to_timestep(sigma: torch.Tensor | float) -> torch.Tensor | float:
    """The model's timestep input for noise level σ: 1000·σ (not truncated, as in diffusers)."""
    return sigma * NUM_TRAIN_TIMESTEPS


def _logit_normal(
    shape: Sequence[int], generator: torch.Generator | None, mean: float, std: float
) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.sigmoid(torch.randn(*shape, generator=generator, device=device) * std + mean)


def sample_sigmas(
    batch: int,
    generator: torch.Generator | None = None,
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 3.0,
) -> torch.Tensor:
    """One training noise level per sample: σ = shift(sigmoid(N(mean, std))), shape (B,), float32.

    The official code draws an integer index floor(1000·u) into a shifted table; this is the continuous
    version of the same distribution. The tensor lives on the generator's device (CPU without one).
    """
    return shift_sigma(_logit_normal((batch,), generator, mean, std), shift)


def sample_chunk_sigmas(
    batch: int,
    chunk_sizes: Sequence[int],
    strategy: str = "uniform",
    generator: torch.Generator | None = None,
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 3.0,
) -> torch.Tensor:
    """Per-chunk noise levels for block-causal training, repeated over each chunk's latent frames: (B, F).

    - `uniform`: an independent logit-normal level per chunk (diffusion forcing).
    - `incremental`: the last chunk gets a logit-normal level u; each earlier chunk a level drawn uniformly
      below the next one's, so noise increases monotonically along the video and the first chunk is the
      cleanest (official `process_timesteps`, reference notes §3.4). Drawn before the shift, which is
      monotone, so the order survives it.
    """
    sizes = [int(n) for n in chunk_sizes]
    if not sizes or any(n <= 0 for n in sizes):
        raise UserError(f"chunk_sizes must be positive frame counts, got {list(chunk_sizes)}")
    if strategy not in CHUNK_STRATEGIES:
        raise UserError(f"chunk sampling strategy must be one of {CHUNK_STRATEGIES}, got {strategy!r}")
    num_chunks = len(sizes)
    if strategy == "uniform":
        u = _logit_normal((batch, num_chunks), generator, mean, std)
    else:
        levels = [_logit_normal((batch,), generator, mean, std)]
        device = levels[0].device
        for _ in range(num_chunks - 1):
            levels.append(torch.rand(batch, generator=generator, device=device) * levels[-1])
        u = torch.stack(levels[::-1], dim=1)
    repeats = torch.tensor(sizes, device=u.device)
    return shift_sigma(u, shift).repeat_interleave(repeats, dim=1)


def flow_matching_loss(
    model_output: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between the predicted velocity and noise − x0, averaged over elements (in fp32).

    `weights` (optional) is a per-sample (B,) or per-latent-frame (B, F) weight or 0/1 mask — e.g. 0 for a
    conditioning frame that must not be trained on; the loss is then the weighted mean over the elements
    that carry weight.
    """
    if model_output.shape != x0.shape or noise.shape != x0.shape:
        raise ValueError(
            f"model_output, x0 and noise must have one shape, got {tuple(model_output.shape)}, "
            f"{tuple(x0.shape)}, {tuple(noise.shape)}"
        )
    err = (model_output.float() - flow_target(x0.float(), noise.float())).square()
    if weights is None:
        return err.mean()
    w = expand_per_frame(weights.float(), err, name="weights").expand_as(err)
    # An all-zero mask gives 0 (not NaN) so a batch of pure conditioning frames cannot poison training.
    return (err * w).sum() / w.sum().clamp_min(torch.finfo(torch.float32).tiny)
