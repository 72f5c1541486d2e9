"""RMSNorm with a learned weight, computed the way diffusers does (variance in fp32, weight applied last)."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype:
            # One fused kernel; it also reduces in fp32, so it matches the unfused path below to rounding.
            return nn.functional.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return x * self.weight


def modulated_layer_norm(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> torch.Tensor:
    """LayerNorm without affine, then `x·(1+scale)+shift`.

    x is (B, N, D); shift/scale are (B, R, D) with R = 1 (one timestep per sample) or R = frames (one per
    latent frame, each row shared by that frame's N / R tokens, which are contiguous in (f, h, w) order).
    """
    batch, tokens, dim = x.shape
    rows = shift.shape[1]
    normed = nn.functional.layer_norm(x, (dim,), eps=eps).view(batch, rows, tokens // rows, dim)
    out = torch.addcmul(shift[:, :, None], normed, 1 + scale[:, :, None])
    return out.view(batch, tokens, dim).to(x.dtype)
