"""Mix-FFN with a temporal conv: 1×1 conv, SiLU, 3×3 depthwise conv, GLU, 1×1 conv, then `u + conv_t(u)`.

The temporal conv (kernel k over frames, zero padding) is the only place where frames mix outside attention.
In block-causal mode each chunk sees the previous chunk's last k//2 frames of `u` on its left and zeros on its
right, so a chunk never looks ahead; the cached mode hands those k//2 frames from block to block.

Parameters keep their conv shapes (the checkpoint layouts), but the forward works on tokens (B, F, H·W, D):
the 1×1 convs are matmuls, the depthwise conv runs channels-last, and the temporal conv is k matmuls over
shifted frames, so activations are never transposed to channels-first and back.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import LinearDiTConfig
from model.kernels.float8_targets import POINTWISE_HOOK


def _pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1×1 conv over tokens as one matmul; the conv's float8 matmul while one is set (inference:
    `model.kernels.float8_targets.swapped_float8`; training: `training.worker.float8`)."""
    float8 = getattr(conv, POINTWISE_HOOK, None)
    if float8 is not None:
        return float8(x)
    return nn.functional.linear(x, conv.weight.flatten(1), conv.bias)


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
        input (B, k//2, H·W, D) including `past`, which is what a cache keeps.

        `chunk_frames` switches on block-causal padding; `past` (B, k//2, H·W, D) is the left context of the
        first frame (zeros when None).
        """
        batch, tokens, dim = x.shape
        frames, height, width = grid
        h = _pointwise(self.conv_inverted, x)
        h = nn.functional.silu(h).view(batch * frames, height, width, -1)
        value, gate = self._depthwise(h).reshape(batch, tokens, -1).chunk(2, dim=-1)
        u = _pointwise(self.conv_point, value * nn.functional.silu(gate))
        u = u.view(batch, frames, height * width, dim)

        if past is None:
            past = u.new_zeros(batch, self.context, height * width, dim)
        left = past.to(u.dtype)
        outputs = []
        for chunk in u.split(chunk_frames or [frames], dim=1):
            right = chunk.new_zeros(batch, self.context, height * width, dim)
            outputs.append(chunk + self._temporal_conv(torch.cat([left, chunk, right], dim=1)))
            left = torch.cat([left, chunk], dim=1)[:, chunk.shape[1] :]
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        return out.view(batch, tokens, dim), left

    def _depthwise(self, h: torch.Tensor) -> torch.Tensor:
        """The 3×3 depthwise conv on channels-last frames (BF, H, W, C) -> (BF, H, W, C), through cuDNN's
        channels-last kernel, compiled or not. (The nine taps as shifted multiply-adds, which Inductor fuses
        with the SiLU before and the gating after, were slower on an H100 on 2026-12-08: 37.3 s against
        26.45 s for the compiled 50-step CFG loop, 1.385 s against 1.182 s for the training step.)"""
        h = self.conv_depth(h.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))
        return h.permute(0, 2, 3, 1)

    def _temporal_conv(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, f + 2·(k//2), HW, D) zero/context-padded frames -> (B, f, HW, D): Σ_j W_j · frame[i + j]."""
        weight = self.conv_temp.weight  # (D_out, D_in, k, 1)
        frames = padded.shape[1] - 2 * self.context
        out = None
        for tap in range(weight.shape[2]):
            term = padded[:, tap : tap + frames] @ weight[:, :, tap, 0].T
            out = term if out is None else out + term
        return out
