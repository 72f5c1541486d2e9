"""Inference noise schedules: the one diffusers' Sana pipelines use (the default) and the official code's.

A schedule is the descending noise levels σ_0 > … > σ_N = 0 a sampler steps through, and the timestep the
transformer is fed at each σ_i (i < N). Two numerics are offered:

- `"diffusers"` (default): what `SanaVideoPipeline` / `SanaImageToVideoPipeline` do, so the same weights,
  noise and prompt give the same latents. DPM-Solver++ follows `DPMSolverMultistepScheduler(use_flow_sigmas=
  True)`: σ = shift(1 − linspace(1, 1/1000, N+1)) without its last value, so it starts just below 1 (its
  second step is already second order), the σ are fp32, and the model sees the integer timesteps
  ⌊1000·σ⌋. Flow Euler follows `FlowMatchEulerDiscreteScheduler(shift)`: σ = shift(linspace(1, σ_min, N))
  with σ_min = shift(1/1000), and the model sees 1000·σ. A guidance scale ≤ 1 means no guidance.
- `"official"`: the SANA-Video code's sampler: σ = shift(linspace(1, 0, N+1)), the model sees 1000·σ, and
  any guidance scale ≠ 1 runs the negative prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import UserError
from model.flow import NUM_TRAIN_TIMESTEPS, shift_sigma, sigma_to_timestep

NUMERICS = ("diffusers", "official")
DEFAULT_NUMERICS = "diffusers"
DEFAULT_INFERENCE_SHIFT = 8.0


@dataclass(frozen=True)
class Schedule:
    """Noise levels (N+1, float64, ending at 0) and the transformer's timestep at each of the first N."""

    sigmas: torch.Tensor
    timesteps: tuple[float, ...]

    def timestep_at(self) -> dict[float, float]:
        """σ_i → timestep_i, the lookup a guided field uses (samplers call it at exactly these σ)."""
        return dict(zip((float(s) for s in self.sigmas[:-1]), self.timesteps, strict=True))


def flow_sigmas(steps: int, shift: float = DEFAULT_INFERENCE_SHIFT) -> torch.Tensor:
    """`steps`+1 descending noise levels: linspace(1, 0) with the flow shift applied (float64, CPU)."""
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)


def sigmas_from_timesteps(timesteps: Sequence[float], shift: float = DEFAULT_INFERENCE_SHIFT) -> torch.Tensor:
    """A descending list of unshifted timesteps in (0, 1000] (e.g. [1000, 960, 889, 727]) → shifted noise
    levels with a final 0 appended, the form every sampler here takes."""
    values = [float(t) for t in timesteps]
    if not values or any(not 0 < t <= NUM_TRAIN_TIMESTEPS for t in values):
        raise UserError(f"denoising timesteps must lie in (0, {NUM_TRAIN_TIMESTEPS}], got {values}")
    if any(b >= a for a, b in zip(values, values[1:], strict=False)):
        raise UserError(f"denoising timesteps must be strictly descending, got {values}")
    base = torch.tensor([*values, 0.0], dtype=torch.float64) / NUM_TRAIN_TIMESTEPS
    return shift_sigma(base, shift)


def check_numerics(numerics: str) -> str:
    if numerics not in NUMERICS:
        raise UserError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
    return numerics


def _with_final_zero(sigmas: np.ndarray) -> torch.Tensor:
    # diffusers keeps its σ in fp32; the samplers here do their scalar arithmetic in float64 on those values.
    return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32)).double()


def diffusers_dpm_schedule(steps: int, shift: float) -> Schedule:
    """`DPMSolverMultistepScheduler(flow_shift=shift, use_flow_sigmas=True).set_timesteps(steps)`."""
    alphas = np.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, steps + 1)
    sigmas = np.flip(shift_sigma(1.0 - alphas, shift))[:-1].copy()
    timesteps = (sigmas * NUM_TRAIN_TIMESTEPS).astype(np.int64)
    return Schedule(_with_final_zero(sigmas), tuple(float(t) for t in timesteps))


def diffusers_euler_schedule(steps: int, shift: float) -> Schedule:
    """`FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(steps)` (static shift)."""
    train = (
        np.linspace(1, NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS, dtype=np.float32)[::-1] / NUM_TRAIN_TIMESTEPS
    )
    train = torch.from_numpy(train.copy())
    train = shift_sigma(train, shift)
    sigma_max, sigma_min = float(train[0]), float(train[-1])
    base = np.linspace(sigma_max * NUM_TRAIN_TIMESTEPS, sigma_min * NUM_TRAIN_TIMESTEPS, steps)
    sigmas = torch.from_numpy(shift_sigma(base / NUM_TRAIN_TIMESTEPS, shift)).float()
    timesteps = sigmas * NUM_TRAIN_TIMESTEPS
    return Schedule(_with_final_zero(sigmas.numpy()), tuple(float(t) for t in timesteps))


def official_schedule(sigmas: torch.Tensor) -> Schedule:
    """Any descending σ list ending at 0, with the model fed 1000·σ (the official code's convention)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    return Schedule(sigmas, tuple(float(sigma_to_timestep(s)) for s in sigmas[:-1]))


def inference_schedule(
    sampler: str,
    steps: int,
    shift: float,
    numerics: str = DEFAULT_NUMERICS,
    denoising_steps: Sequence[float] | None = None,
) -> Schedule:
    """The schedule `generate_video` runs: a few-step `denoising_steps` list or the re-noising sampler
    always use the official convention (diffusers has no such pipeline); otherwise `numerics` decides."""
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    if denoising_steps is not None:
        return official_schedule(sigmas_from_timesteps(denoising_steps, shift))
    if check_numerics(numerics) == "official" or sampler == "renoise":
        return official_schedule(flow_sigmas(steps, shift))
    if sampler == "euler":
        return diffusers_euler_schedule(steps, shift)
    return diffusers_dpm_schedule(steps, shift)


def effective_guidance(guidance_scale: float, numerics: str = DEFAULT_NUMERICS) -> float:
    """The scale the samplers run: under diffusers numerics any scale ≤ 1 is no guidance (scale 1)."""
    if check_numerics(numerics) == "diffusers" and guidance_scale <= 1.0:
        return 1.0
    return guidance_scale
