"""`fused_linear_attention`: the Triton linear-attention core behind `model.attention.linear_attention`'s
signature, as a torch custom op (`svp::fused_linear_attention`) so that `torch.compile` keeps it as one opaque
call inside a compiled block.

Modes, as in the PyTorch path: bidirectional (no chunks, no past), block-causal (`chunk_tokens`: chunk c sees
chunks ≤ c) and cached (`past` state added before the first chunk; the returned state is past + every chunk).
Forward only: callers fall back to the PyTorch path when gradients are needed (`model.kernels.use_fused`).
"""

from __future__ import annotations

import math

import torch

from model.kernels import triton_linear_attention as tk

# (chunk_tokens, tokens per item, device) -> int32 (items, 3) table of (chunk, start, end) on that device.
# Built once per shape (outside any CUDA-graph capture: the first call of a shape is a warm-up).
_ITEMS: dict[tuple, torch.Tensor] = {}
# Programs per multiprocessor to aim for (several resident per SM hide memory latency).
_PROGRAMS_PER_SM = 4


def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 8
    return torch.cuda.get_device_properties(device).multi_processor_count


def _work_items(
    chunk_tokens: tuple[int, ...], heads_total: int, block_n: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split every chunk into token ranges (multiples of the kernel's tile) so that heads_total × items
    programs are about _PROGRAMS_PER_SM per multiprocessor. Returns the int32 (items, 3) table of
    (chunk, start, end) and the index of each chunk's last item (items are in chunk order)."""
    target = max(1, math.ceil(_PROGRAMS_PER_SM * _multiprocessors(device) / heads_total))
    tokens = sum(chunk_tokens)
    per_item = max(block_n, math.ceil(tokens / target / block_n) * block_n)
    key = (chunk_tokens, per_item, str(device))
    if key not in _ITEMS:
        rows, last, start = [], [], 0
        for chunk, size in enumerate(chunk_tokens):
            for offset in range(0, size, per_item):
                rows.append((chunk, start + offset, start + min(size, offset + per_item)))
            last.append(len(rows) - 1)
            start += size
        table = torch.tensor(rows, dtype=torch.int32, device=device)
        _ITEMS[key] = (table, torch.tensor(last, dtype=torch.long, device=device))
    return _ITEMS[key]


def _launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float,
    chunk_tokens: tuple[int, ...],
    past_kv: torch.Tensor | None,
    past_k: torch.Tensor | None,
    fast_bf16: bool = False,
    variant: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns out (B, N, heads, d) in q's dtype and the prefix states (B, heads, chunks, d, d) and
    (B, heads, chunks, d) after each chunk, fp32."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if k.stride() != v.stride() or q.stride() != k.stride():
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    batch, tokens, heads, dim = q.shape
    chunks = len(chunk_tokens)
    cos, sin = cos.contiguous().float(), sin.contiguous().float()
    launch = tk.VARIANTS[variant or tk.DEFAULT_VARIANT]
    items, chunk_last_item = _work_items(chunk_tokens, batch * heads, launch["BLOCK_N"], q.device)
    slots = items.shape[0] if launch["PARTIALS"] else chunks
    kv = torch.zeros(batch, heads, slots, dim, dim, device=q.device, dtype=torch.float32)
    ksum = torch.zeros(batch, heads, slots, dim, device=q.device, dtype=torch.float32)
    out = torch.empty_like(q)
    block_d = max(16, 1 << (dim - 1).bit_length())  # next power of two
    if q.dtype == torch.float32:
        precision = tk.IEEE.value
    else:
        precision = (tk.BF16 if fast_bf16 else tk.SPLIT).value
    grid = (batch * heads, items.shape[0])
    strides = (q.stride(0), q.stride(1), q.stride(2))
    shape_args = (heads, dim, dim // 2, chunks, (batch * heads * tokens).bit_length())
    meta = {**launch, "BLOCK_D": block_d, "PRECISION": precision}
    state_shape = (heads, dim, dim // 2, slots, shape_args[-1])
    tk.state_kernel[grid](k, v, cos, sin, items, kv, ksum, *strides, *state_shape, **meta, **tk.STATE_LAUNCH)
    kv, ksum = kv.cumsum(dim=2), ksum.cumsum(dim=2)
    if launch["PARTIALS"]:  # per-item sums -> running sums at each chunk's last item
        kv, ksum = kv.index_select(2, chunk_last_item), ksum.index_select(2, chunk_last_item)
    if past_kv is not None:
        kv = kv + past_kv.float()[:, :, None]
        ksum = ksum + past_k.float()[:, :, None]
    out_strides = (out.stride(0), out.stride(1), out.stride(2))
    tk.output_kernel[grid](
        q,
        out,
        cos,
        sin,
        items,
        kv,
        ksum,
        eps,
        *strides,
        *out_strides,
        *shape_args,
        **meta,
        **tk.OUTPUT_LAUNCH,
    )
    return out, kv, ksum


@torch.library.custom_op("svp::fused_linear_attention", mutates_args=())
def _fused_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float,
    chunk_tokens: list[int],
    past_kv: torch.Tensor | None,
    past_k: torch.Tensor | None,
    fast_bf16: bool,
    variant: str | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, kv, ksum = _launch(q, k, v, cos, sin, eps, tuple(chunk_tokens), past_kv, past_k, fast_bf16, variant)
    return out, kv[:, :, -1].contiguous(), ksum[:, :, -1].contiguous()


@_fused_op.register_fake
def _(q, k, v, cos, sin, eps, chunk_tokens, past_kv, past_k, fast_bf16, variant):
    batch, _, heads, dim = q.shape
    return (
        torch.empty_like(q),
        q.new_empty(batch, heads, v.shape[-1], dim, dtype=torch.float32),
        q.new_empty(batch, heads, dim, dtype=torch.float32),
    )


def fused_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    eps: float,
    chunk_tokens: list[int] | None = None,
    past: tuple[torch.Tensor, torch.Tensor] | None = None,
    fast_bf16: bool = False,
    variant: str | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Same arguments and state as `model.attention.linear_attention`; the output is in q's dtype (the
    PyTorch path returns fp32, which its caller casts to the activations' dtype). `fast_bf16` takes bf16
    inputs' contractions as single bf16 dots instead of hi/lo split ones (less accurate; benchmarks only);
    `variant` picks a launch variant of `triton_linear_attention.VARIANTS` (default: DEFAULT_VARIANT)."""
    chunks = list(chunk_tokens) if chunk_tokens else [q.shape[1]]
    if sum(chunks) != q.shape[1]:
        raise ValueError(f"chunk_tokens {chunks} must sum to the {q.shape[1]} tokens")
    past_kv, past_k = past if past is not None else (None, None)
    out, kv, ksum = _fused_op(q, k, v, *rope, eps, chunks, past_kv, past_k, fast_bf16, variant)
    return out, (kv, ksum)
