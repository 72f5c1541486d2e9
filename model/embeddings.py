"""Conditioning embeddings: sinusoidal timestep features, AdaLN-single, and the caption projection."""

from __future__ import annotations

import math

import torch
from torch import nn

TIMESTEP_FEATURES = 256


def sinusoidal_timestep_features(timesteps: torch.Tensor, dim: int = TIMESTEP_FEATURES) -> torch.Tensor:
    """(n,) timesteps in [0, 1000] -> (n, dim) float32 `[cos | sin]` features, freq_j = 10000^(-j / (dim/2))."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class AdaLNSingle(nn.Module):
    """Timestep embedding `t_emb = MLP(sinusoid(t))` and the shared modulation `t0 = Linear(SiLU(t_emb))`.

    `t0` (6·D per timestep) modulates every block; `t_emb` itself drives the output layer.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(TIMESTEP_FEATURES, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)
        self.modulation = nn.Linear(hidden_size, 6 * hidden_size)

    def forward(self, timesteps: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) timesteps -> (t0 (n, 6D), t_emb (n, D))."""
        features = sinusoidal_timestep_features(timesteps).to(dtype)
        t_emb = self.linear_2(nn.functional.silu(self.linear_1(features)))
        return self.modulation(nn.functional.silu(t_emb)), t_emb


class CaptionProjection(nn.Module):
    """Text-encoder features (caption_channels) -> model width: Linear, GELU(tanh), Linear."""

    def __init__(self, caption_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(caption_channels, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.linear_2(nn.functional.gelu(self.linear_1(text), approximate="tanh"))
