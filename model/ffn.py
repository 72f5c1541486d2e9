"""Mix-FFN with a temporal conv: 1×1 conv, SiLU, 3×3 depthwise conv, GLU, 1×1 conv, then `u + conv_t(u)`.

The temporal conv (kernel k over frames, zero padding) is the only place where frames mix outside attention.
In block-causal mode each chunk sees the previous chunk's last k//2 frames of `u` on its left and zeros on its
right, so a chunk never looks ahead; the cached mode hands those k//2 frames from block to block.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import LinearDiTConfig


class MixFFN(nn.Module):
    def __init__(self, config: LinearDiTConfig) -> None:
        super().__init__()
        dim, hidden = config.hidden_size, config.ffn_hidden_size
        self.context = config.temporal_context
        self.conv_inverted = nn.Conv2d(dim, 2 * hidden, 1)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.conv_point = nn.Conv2d(hidden, dim, 1, bias=False)
        kernel = config.temporal_kernel_size
        self.conv_temp = nn.Conv2d(dim, dim, (kernel, 1), padding=(self.context, 0), bias=False)
        # Zero at init (as in official training): a fresh block is exactly the image FFN.
        nn.init.zeros_(self.conv_temp.weight)

    def forward(
        self,
        x: torch.Tensor,
        grid: tuple[int, int, int],
        chunk_frames: list[int] | None = None,
        past: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, N, D) over a (F, H, W) token grid -> (B, N, D), and the last k//2 frames of the temporal conv's
        input (B, D, k//2, H·W) including `past`, which is what a cache keeps.

        `chunk_frames` switches on block-causal padding; `past` (B, D, k//2, H·W) is the left context of the
        first frame (zeros when None).
        """
        batch, tokens, dim = x.shape
        frames, height, width = grid
        h = x.reshape(batch * frames, height, width, dim).permute(0, 3, 1, 2)
        h = nn.functional.silu(self.conv_inverted(h))
        value, gate = self.conv_depth(h).chunk(2, dim=1)
        h = self.conv_point(value * nn.functional.silu(gate))
        u = h.reshape(batch, frames, dim, height * width).permute(0, 2, 1, 3)  # (B, D, F, HW)

        if past is None and chunk_frames is None:
            temporal = self.conv_temp(u)  # one chunk with zero context: the plain zero-padded conv
        else:
            if past is None:
                past = u.new_zeros(batch, dim, self.context, height * width)
            temporal = self._chunked_temporal_conv(u, chunk_frames or [frames], past.to(u.dtype))
        out = (u + temporal).permute(0, 2, 3, 1).reshape(batch, tokens, dim)
        return out, self._last_frames(u, past)

    def _last_frames(self, u: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
        """The last k//2 frames of [past, u] (a view of u when u is long enough)."""
        frames = u.shape[2]
        if frames >= self.context:
            return u[:, :, frames - self.context :]
        if past is None:
            past = u.new_zeros(*u.shape[:2], self.context, u.shape[3])
        return torch.cat([past[:, :, frames:].to(u.dtype), u], dim=2)

    def _chunked_temporal_conv(
        self, u: torch.Tensor, chunk_frames: list[int], left: torch.Tensor
    ) -> torch.Tensor:
        outputs = []
        for chunk in u.split(chunk_frames, dim=2):
            right = chunk.new_zeros(*chunk.shape[:2], self.context, chunk.shape[3])
            padded = torch.cat([left, chunk, right], dim=2)
            outputs.append(nn.functional.conv2d(padded, self.conv_temp.weight))
            left = torch.cat([left, chunk], dim=2)[:, :, chunk.shape[2] :]
        return torch.cat(outputs, dim=2)
