"""Classifier-free guidance and the field a sampler integrates.

`guided_field` turns a velocity function `fn(x, timesteps, text, text_mask)` into the (x, σ) → velocity field
the steppers of `model.samplers` integrate: one batched call on the negative and positive text when guidance
is on (v = v_neg + g·(v_pos − v_neg)), and the timestep the model is fed at each σ (1000·σ, or a `Schedule`'s
own timesteps, e.g. diffusers' integer ones).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from core.errors import UserError
from model.flow import sigma_to_timestep

if TYPE_CHECKING:
    from model.schedules import Schedule

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
# The guided field the steppers integrate: (x, σ) -> velocity.
Field = Callable[[torch.Tensor, float], torch.Tensor]


def split_schedule(
    sigmas: torch.Tensor | Schedule | None,
) -> tuple[torch.Tensor | None, dict[float, float] | None]:
    """A `Schedule` (σ plus the timesteps the model sees) or plain σ (the model sees 1000·σ)."""
    if sigmas is None or isinstance(sigmas, torch.Tensor):
        return sigmas, None
    return sigmas.sigmas, sigmas.timestep_at()


def _pad_text(text: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - text.shape[1]
    if extra == 0:
        return text, mask
    return (
        torch.nn.functional.pad(text, (0, 0, 0, extra)),
        torch.nn.functional.pad(mask, (0, extra)),
    )


def guidance_text(
    text: torch.Tensor,
    text_mask: torch.Tensor | None,
    negative_text: torch.Tensor,
    negative_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (2B, L, C) text and (2B, L) mask of a CFG batch: negative rows first, then positive.

    A (1, L, C) negative text serves a whole batch; texts of different lengths are zero-padded with mask 0.
    """
    batch = text.shape[0]
    if negative_text.shape[0] not in (1, batch):
        raise ValueError(
            f"negative text batch {negative_text.shape[0]} does not match the text batch {batch}"
        )
    ones = torch.ones(1, 1, dtype=torch.long, device=text.device)
    pos_mask = text_mask if text_mask is not None else ones.expand(batch, text.shape[1])
    neg_mask = negative_mask if negative_mask is not None else ones.expand(1, negative_text.shape[1])
    neg_text, neg_mask = negative_text.expand(batch, -1, -1), neg_mask.expand(batch, -1)
    length = max(text.shape[1], neg_text.shape[1])
    neg_text, neg_mask = _pad_text(neg_text, neg_mask, length)
    pos_text, pos_mask = _pad_text(text, pos_mask, length)
    both_text = torch.cat([neg_text.to(text.device, text.dtype), pos_text])
    both_mask = torch.cat([neg_mask.to(text.device, torch.long), pos_mask.long()])
    return both_text, both_mask


def guided_field(
    fn: VelocityFn,
    text: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    *,
    guidance_scale: float = 1.0,
    negative_text: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
    timesteps: dict[float, float] | None = None,
) -> Field:
    """The (x, σ) → velocity field a sampler integrates, with classifier-free guidance when scale ≠ 1.

    At scale 1 guidance is the conditional field itself, so the negative text is not evaluated (as in
    diffusers). Otherwise one batched call on `guidance_text(...)` computes both branches. `timesteps`
    maps each σ of the schedule to the timestep the model is fed (`Schedule.timestep_at`); without it the
    model sees 1000·σ.
    """

    def timesteps_for(x: torch.Tensor, sigma: float) -> torch.Tensor:
        value = timesteps[sigma] if timesteps is not None else sigma_to_timestep(sigma)
        return torch.full((x.shape[0],), value, device=x.device, dtype=torch.float32)

    if guidance_scale == 1.0:
        return lambda x, sigma: fn(x, timesteps_for(x, sigma), text, text_mask)
    if negative_text is None:
        raise UserError(f"guidance_scale={guidance_scale} needs negative (or empty-prompt) text embeddings")
    both_text, both_mask = guidance_text(text, text_mask, negative_text, negative_mask)

    def field(x: torch.Tensor, sigma: float) -> torch.Tensor:
        x2 = torch.cat([x, x])
        v_neg, v_pos = fn(x2, timesteps_for(x2, sigma), both_text, both_mask).chunk(2)
        return v_neg + guidance_scale * (v_pos - v_neg)

    return field
