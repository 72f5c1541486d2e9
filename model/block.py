"""One Linear DiT block: AdaLN-single-modulated linear self-attention, cross-attention, Mix-FFN.

    x = x + g1 · SelfAttn(LN(x)·(1+c1)+s1)
    x = x + CrossAttn(x, caption)            # no pre-norm, no gate
    x = x + g2 · MixFFN(LN(x)·(1+c2)+s2)

with (s1, c1, g1, s2, c2, g2) = scale_shift_table + t0, one row per sample or per latent frame.
"""

from __future__ import annotations

import torch
from torch import nn

from model.attention import AttentionState, CrossAttention, LinearSelfAttention
from model.config import LinearDiTConfig
from model.ffn import MixFFN
from model.norms import modulated_layer_norm

# What one block hands to a cache: the attention running sums and the temporal conv's last input frames.
BlockState = tuple[AttentionState, torch.Tensor]


def _gated(gate: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """gate (B, R, D) applied to x (B, N, D), each of the R rows to its N / R contiguous tokens."""
    batch, tokens, dim = x.shape
    rows = gate.shape[1]
    return (x.view(batch, rows, tokens // rows, dim) * gate[:, :, None]).view(batch, tokens, dim)


class LinearDiTBlock(nn.Module):
    def __init__(self, config: LinearDiTConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.norm_eps = config.norm_eps
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        self.attn1 = LinearSelfAttention(config)
        self.attn2 = CrossAttention(config)
        self.ff = MixFFN(config)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        text_bias: torch.Tensor | None,
        t0: torch.Tensor,
        grid: tuple[int, int, int],
        rope: tuple[torch.Tensor, torch.Tensor],
        chunk_frames: list[int] | None = None,
        past: tuple[AttentionState | None, torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, BlockState]:
        """x (B, N, D) tokens of a (F, H, W) grid; t0 (B, R, 6D); `past` is a cache's state for this layer."""
        modulation = self.scale_shift_table[None, None] + t0.unflatten(-1, (6, -1))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.unbind(dim=2)
        attention_past, temporal_past = past if past is not None else (None, None)
        tokens_per_frame = grid[1] * grid[2]
        chunk_tokens = [f * tokens_per_frame for f in chunk_frames] if chunk_frames else None

        h = modulated_layer_norm(x, shift_msa, scale_msa, self.norm_eps)
        attn_out, attention_state = self.attn1(h, rope, chunk_tokens, attention_past)
        x = x + _gated(gate_msa, attn_out)
        x = x + self.attn2(x, text, text_bias)
        h = modulated_layer_norm(x, shift_mlp, scale_mlp, self.norm_eps)
        ff_out, temporal_state = self.ff(h, grid, chunk_frames, temporal_past)
        x = x + _gated(gate_mlp, ff_out)
        return x, (attention_state, temporal_state)
