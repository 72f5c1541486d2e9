"""`LinearDiTCache`: the constant-memory state of block-autoregressive inference.

Per layer it keeps three tensors whose sizes never depend on how many blocks came before:
- `kv[i]`    (B, heads, d, d) fp32: Σ v·RoPE(φ(k))ᵀ over every cached token (keys rotated at their absolute
  frame positions when they were folded in; later queries are rotated at theirs, so no re-rotation is needed);
- `k_sum[i]` (B, heads, d) fp32: Σ φ(k), the un-rotated normaliser;
- `temporal[i]` (B, k//2, H'·W', D): the last k//2 frames of the Mix-FFN temporal conv's input, the left
  context of the next block's first frame. Allocated on the first `update_cache` unless the token grid was
  given to `LinearDiT.new_cache`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LinearDiTCache:
    kv: list[torch.Tensor]
    k_sum: list[torch.Tensor]
    temporal: list[torch.Tensor | None]
    # Latent frames folded in so far: the next block must start at this frame.
    num_frames: int = 0
    # (H', W') token grid the temporal slots were sized for; None until known.
    token_hw: tuple[int, int] | None = field(default=None)

    @property
    def batch_size(self) -> int:
        return self.kv[0].shape[0]

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (*self.kv, *self.k_sum, *self.temporal) if t is not None]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def layer_state(self, layer: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        return (self.kv[layer], self.k_sum[layer]), self.temporal[layer]

    def store_layer(
        self, layer: int, attention: tuple[torch.Tensor, torch.Tensor], temporal: torch.Tensor
    ) -> None:
        """Overwrite layer `layer` in place, so tensors keep their storage and size."""
        self.kv[layer].copy_(attention[0])
        self.k_sum[layer].copy_(attention[1])
        if self.temporal[layer] is None:
            self.temporal[layer] = temporal.detach().clone()
        else:
            self.temporal[layer].copy_(temporal)

    def check_block(self, batch_size: int, token_hw: tuple[int, int], frame_offset: int) -> None:
        """A block must match the cache's batch and grid and start right after the frames already folded in."""
        if batch_size != self.batch_size:
            raise ValueError(f"block batch size {batch_size} does not match the cache's {self.batch_size}")
        if self.token_hw is not None and tuple(token_hw) != tuple(self.token_hw):
            raise ValueError(f"block token grid {tuple(token_hw)} does not match the cache's {self.token_hw}")
        if frame_offset != self.num_frames:
            raise ValueError(
                f"frame_offset {frame_offset} does not follow the {self.num_frames} latent frames in the cache"
            )
