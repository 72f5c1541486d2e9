"""3D rotary position embedding (Wan-style) over the (frame, height, width) token grid.

Each head's channels are split into [t | h | w] parts (`LinearDiTConfig.rope_split`); every part rotates
interleaved channel pairs (2i, 2i+1) by `position · θ^(-2i/dim)`. Angles are computed in float64 and cast to
float32, exactly like diffusers' tables, but on the fly from absolute positions so that a block-AR block
starting at frame `frame_offset` gets the same angles it would have inside the full video.
"""

from __future__ import annotations

import torch


def _axis_angles(positions: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """(n,) integer positions -> (n, dim // 2) float64 angles."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim))
    return torch.outer(positions.to(torch.float64), inv_freq)


def rope_tables(
    grid: tuple[int, int, int],
    split: tuple[int, int, int],
    theta: float,
    max_seq_len: int,
    frame_offset: int = 0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (N, head_dim // 2) float32, for tokens in (f, h, w) row-major order.

    Frames are numbered from `frame_offset`; rows and columns from 0.
    """
    frames, height, width = grid
    if frame_offset < 0 or frame_offset + frames > max_seq_len or max(height, width) > max_seq_len:
        raise ValueError(
            f"token grid frames [{frame_offset}, {frame_offset + frames}) x {height} x {width} exceeds "
            f"rope_max_seq_len={max_seq_len}; raise it in the model config"
        )
    t_dim, h_dim, w_dim = split
    ang_t = _axis_angles(torch.arange(frame_offset, frame_offset + frames, device=device), t_dim, theta)
    ang_h = _axis_angles(torch.arange(height, device=device), h_dim, theta)
    ang_w = _axis_angles(torch.arange(width, device=device), w_dim, theta)
    angles = torch.cat(
        [
            ang_t[:, None, None, :].expand(frames, height, width, -1),
            ang_h[None, :, None, :].expand(frames, height, width, -1),
            ang_w[None, None, :, :].expand(frames, height, width, -1),
        ],
        dim=-1,
    ).reshape(frames * height * width, -1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of x (..., N, heads, head_dim) by tables (N, head_dim // 2).

    The result is float32 whatever x's dtype: the rotated features feed the fp32 attention state. One complex
    multiply (pair (a, b) as a + ib times cos + i·sin) instead of several real element-wise passes. Under
    torch.compile the same product is written out in reals, which the compiler fuses (it does not fuse complex
    tensors); both round the same four products and two sums.
    """
    if torch.compiler.is_compiling():
        pairs = x.float().unflatten(-1, (-1, 2))
        a, b = pairs.unbind(-1)
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * torch.complex(cos, sin)[:, None, :]).flatten(-2)
