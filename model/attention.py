"""Self-attention (ReLU linear attention with 3D RoPE) and softmax cross-attention to the caption.

Linear attention, for query i over the keys j it may see:

    o_i = [Σ_j v_j RoPE(φ(k_j))ᵀ] RoPE(φ(q_i)) / (φ(q_i) · Σ_j φ(k_j) + ε),   φ = ReLU

The numerator uses rotated features, the normaliser the un-rotated ones (so it stays ≥ 0). Both sums are
(heads, d, d) and (heads, d) states accumulated in fp32, whatever the activations' dtype. Because the state is
a plain sum, the three modes share one loop over chunks of frames:
- bidirectional: one chunk, nothing before it;
- block-causal (training): chunk c sees the running sum over chunks ≤ c, O(N·d²) and no N×N mask;
- cached (block-AR inference): one chunk, and the running sum starts from the cache's state.
"""

from __future__ import annotations

import torch
from torch import nn

from model import kernels
from model.config import LinearDiTConfig
from model.norms import RMSNorm
from model.rope import apply_rope

# (Σ v·RoPE(φ(k))ᵀ as (B, heads, d_v, d_k), Σ φ(k) as (B, heads, d_k)), both fp32.
AttentionState = tuple[torch.Tensor, torch.Tensor]


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    eps: float,
    chunk_tokens: list[int] | None = None,
    past: AttentionState | None = None,
) -> tuple[torch.Tensor, AttentionState]:
    """q, k: φ-features (B, N, heads, d); v: (B, N, heads, d). Returns fp32 output (B, N, heads, d) and the
    running state after the last chunk (past + every chunk), which is what a cache keeps."""
    q_rot, k_rot = apply_rope(q, *rope), apply_rope(k, *rope)
    q, k, v = q.float(), k.float(), v.float()
    if past is None:
        batch, _, heads, dim = q.shape
        kv_sum = q.new_zeros(batch, heads, v.shape[-1], dim)
        k_sum = q.new_zeros(batch, heads, dim)
    else:
        kv_sum, k_sum = past
    sizes = chunk_tokens or [q.shape[1]]
    outputs = []
    for q_c, qr_c, k_c, kr_c, v_c in zip(
        *(t.split(sizes, dim=1) for t in (q, q_rot, k, k_rot, v)), strict=True
    ):
        kv_sum = kv_sum + torch.einsum("bnhd,bnhe->bhed", kr_c, v_c)
        k_sum = k_sum + k_c.sum(dim=1)
        numerator = torch.einsum("bhed,bnhd->bnhe", kv_sum, qr_c)
        denominator = torch.einsum("bhd,bnhd->bnh", k_sum, q_c)
        outputs.append(numerator * (1.0 / (denominator + eps))[..., None])
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return out, (kv_sum, k_sum)


class LinearSelfAttention(nn.Module):
    def __init__(self, config: LinearDiTConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.heads = config.num_heads
        self.eps = config.linear_attention_eps
        self.fused_backward = config.fused_attention_backward
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        # Normalised across all heads (before the head split), as both public implementations do.
        self.norm_q = RMSNorm(dim, eps=config.qk_norm_eps)
        self.norm_k = RMSNorm(dim, eps=config.qk_norm_eps)
        self.to_out = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        chunk_tokens: list[int] | None = None,
        past: AttentionState | None = None,
    ) -> tuple[torch.Tensor, AttentionState]:
        q = torch.relu(self.norm_q(self.to_q(x))).unflatten(-1, (self.heads, -1))
        k = torch.relu(self.norm_k(self.to_k(x))).unflatten(-1, (self.heads, -1))
        v = self.to_v(x).unflatten(-1, (self.heads, -1))
        if not kernels.use_fused(q, k, v, self.fused_backward, past is not None):
            out, state = linear_attention(q, k, v, rope, self.eps, chunk_tokens, past)
        elif kernels.needs_grad(q, k, v):
            from model.kernels.linear_attention_training import trainable_linear_attention

            out, state = trainable_linear_attention(q, k, v, rope, self.eps, chunk_tokens)
        else:
            from model.kernels.linear_attention import fused_linear_attention

            out, state = fused_linear_attention(q, k, v, rope, self.eps, chunk_tokens, past)
        return self.to_out(out.flatten(2).to(x.dtype)), state


def caption_attention_bias(text_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, L) keep-mask (1 = keep) -> additive bias (B, 1, 1, L): 0 kept, -10000 dropped.

    A finite bias (as diffusers uses) rather than -inf keeps an all-padding caption finite.
    """
    if text_mask is None:
        return None
    return ((1 - text_mask.to(dtype)) * -10000.0)[:, None, None, :]


class CrossAttention(nn.Module):
    """Softmax attention from video tokens to caption tokens; no pre-norm, q/k RMSNorm across heads."""

    def __init__(self, config: LinearDiTConfig) -> None:
        super().__init__()
        dim, inner = config.hidden_size, config.cross_attention_inner_dim
        self.heads = config.cross_attention_heads
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.norm_q = RMSNorm(inner, eps=config.cross_attention_qk_norm_eps)
        self.norm_k = RMSNorm(inner, eps=config.cross_attention_qk_norm_eps)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        q = self.norm_q(self.to_q(x)).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k = self.norm_k(self.to_k(text)).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        v = self.to_v(text).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        if bias is not None:
            bias = bias.to(q.dtype)
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.to_out(out.transpose(1, 2).flatten(2).to(q.dtype))
