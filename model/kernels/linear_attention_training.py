"""The fused linear-attention core with a gradient: the forward kernels plus the Triton backward
(`triton_linear_attention_backward`), as the torch custom op `svp::linear_attention_train` with its autograd
formula registered (`torch.library.register_autograd`, the custom-op form of a `torch.autograd.Function`), so
that `torch.compile` keeps forward and backward as two opaque calls inside a compiled block.

Bidirectional and block-causal (`chunk_tokens`); no past state (training never starts from a cache). The
forward saves q, k, v and the small per-chunk prefix states; the backward recomputes everything else.
"""

from __future__ import annotations

import torch

from model.kernels import triton_linear_attention_backward as tkb
from model.kernels.linear_attention import launch_forward, plan, rope_operands, same_layout


@torch.library.custom_op("svp::linear_attention_train", mutates_args=())
def _train_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float,
    chunk_tokens: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return launch_forward(q, k, v, cos, sin, eps, tuple(chunk_tokens))


@_train_forward.register_fake
def _(q, k, v, cos, sin, eps, chunk_tokens):
    batch, _, heads, dim = q.shape
    chunks = len(chunk_tokens)
    return (
        torch.empty_like(q),
        q.new_empty(batch, heads, chunks, v.shape[-1], dim, dtype=torch.float32),
        q.new_empty(batch, heads, chunks, dim, dtype=torch.float32),
    )


def launch_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kv: torch.Tensor,
    ksum: torch.Tensor,
    eps: float,
    chunk_tokens: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of the output's gradient `grad`, from the forward's prefix states kv (B, heads, chunks,
    d, d) and ksum (B, heads, chunks, d)."""
    grad, q, k, v = same_layout(grad.to(q.dtype), q, k, v)
    batch, tokens, heads, dim = q.shape
    launch = plan(q, chunk_tokens, fast_bf16=False, variant=None)
    strides = q.stride()[:3]
    shape = (heads, dim, dim // 2, launch.chunks, launch.size_class)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dden = torch.empty(batch * heads, tokens, device=q.device, dtype=torch.float32)
    kv, ksum = kv.contiguous(), ksum.contiguous()
    tkb.query_grad_kernel[launch.grid](
        q, grad, dq, dden, cos, sin, launch.items, kv, ksum, eps, *strides, tokens, *shape,
        **launch.meta, **tkb.QUERY_GRAD_LAUNCH,
    )  # fmt: skip
    dkv, dksum = torch.zeros_like(kv), torch.zeros_like(ksum)
    tkb.state_grad_kernel[launch.grid](
        q, grad, dden, cos, sin, launch.items, ksum, dkv, dksum, eps, *strides, tokens, *shape,
        **launch.meta, **tkb.STATE_GRAD_LAUNCH,
    )  # fmt: skip
    # A key of chunk c is in the state of every chunk ≥ c: suffix sums over chunks.
    dkv, dksum = dkv.flip(2).cumsum(2).flip(2), dksum.flip(2).cumsum(2).flip(2)
    tkb.key_value_grad_kernel[launch.grid](
        k, v, dk, dv, cos, sin, launch.items, dkv, dksum, *strides, *shape,
        **launch.meta, **tkb.KEY_VALUE_GRAD_LAUNCH,
    )  # fmt: skip
    return dq, dk, dv


@torch.library.custom_op("svp::linear_attention_train_backward", mutates_args=())
def _train_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kv: torch.Tensor,
    ksum: torch.Tensor,
    eps: float,
    chunk_tokens: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return launch_backward(grad, q, k, v, cos, sin, kv, ksum, eps, tuple(chunk_tokens))


@_train_backward.register_fake
def _(grad, q, k, v, cos, sin, kv, ksum, eps, chunk_tokens):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cos, sin, eps, chunk_tokens = inputs
    _, kv, ksum = output
    ctx.save_for_backward(q, k, v, cos, sin, kv, ksum)
    ctx.eps, ctx.chunk_tokens = eps, chunk_tokens
    ctx.mark_non_differentiable(kv, ksum)


def _backward(ctx, grad, _grad_kv, _grad_ksum):
    q, k, v, cos, sin, kv, ksum = ctx.saved_tensors
    dq, dk, dv = _train_backward(grad, q, k, v, cos, sin, kv, ksum, ctx.eps, ctx.chunk_tokens)
    return dq, dk, dv, None, None, None, None


torch.library.register_autograd("svp::linear_attention_train", _backward, setup_context=_setup_context)


def trainable_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    eps: float,
    chunk_tokens: list[int] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """`model.attention.linear_attention` without `past`, differentiable in q, k and v; the output is in
    q's dtype, the returned state (after the last chunk) carries no gradient."""
    chunks = list(chunk_tokens) if chunk_tokens else [q.shape[1]]
    if sum(chunks) != q.shape[1]:
        raise ValueError(f"chunk_tokens {chunks} must sum to the {q.shape[1]} tokens")
    q, k, v = same_layout(q, k, v)
    out, kv, ksum = _train_forward(q, k, v, *rope_operands(*rope), eps, chunks)
    return out, (kv[:, :, -1], ksum[:, :, -1])
