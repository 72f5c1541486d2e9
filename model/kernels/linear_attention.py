"""`fused_linear_attention`: the Triton linear-attention core behind `model.attention.linear_attention`'s
signature, as a torch custom op (`svp::fused_linear_attention`) so that `torch.compile` keeps it as one opaque
call inside a compiled block.

Modes, as in the PyTorch path: bidirectional (no chunks, no past), block-causal (`chunk_tokens`: chunk c sees
chunks ≤ c) and cached (`past` state added before the first chunk; the returned state is past + every chunk).
Forward only; training takes `linear_attention_training` (the same forward kernels plus a fused backward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Plan:
    """How one problem is launched: the work items, the grid, the kernels' shape arguments and meta-parameters
    (shared by the forward passes and the backward's)."""

    items: torch.Tensor  # int32 (items, 3): (chunk, start, end)
    chunk_last_item: torch.Tensor
    grid: tuple[int, int]
    chunks: int
    size_class: int
    meta: dict


def plan(q: torch.Tensor, chunk_tokens: tuple[int, ...], fast_bf16: bool, variant: str | None) -> Plan:
    batch, tokens, heads, dim = q.shape
    launch = tk.VARIANTS[variant or tk.DEFAULT_VARIANT]
    items, chunk_last_item = _work_items(chunk_tokens, batch * heads, launch["BLOCK_N"], q.device)
    if q.dtype == torch.float32:
        precision = tk.IEEE.value
    else:
        precision = (tk.BF16 if fast_bf16 else tk.SPLIT).value
    block_d = max(16, 1 << (dim - 1).bit_length())  # next power of two
    return Plan(
        items,
        chunk_last_item,
        (batch * heads, items.shape[0]),
        len(chunk_tokens),
        (batch * heads * tokens).bit_length(),
        {**launch, "BLOCK_D": block_d, "PRECISION": precision},
    )


def same_layout(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The kernels take one set of strides for all of these: unit channel stride, identical strides."""
    tensors = tuple(t if t.stride(-1) == 1 else t.contiguous() for t in tensors)
    if any(t.stride() != tensors[0].stride() for t in tensors):
        tensors = tuple(t.contiguous() for t in tensors)
    return tensors


def rope_operands(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return cos.contiguous().float(), sin.contiguous().float()


def _state_pass(k, v, cos, sin, launch: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chunk (or per-item, PARTIALS) sums Σ v·RoPE(k)ᵀ and Σ k, fp32."""
    batch, _, heads, dim = k.shape
    slots = launch.items.shape[0] if launch.meta["PARTIALS"] else launch.chunks
    kv = torch.zeros(batch, heads, slots, dim, dim, device=k.device, dtype=torch.float32)
    ksum = torch.zeros(batch, heads, slots, dim, device=k.device, dtype=torch.float32)
    shape = (heads, dim, dim // 2, slots, launch.size_class)
    tk.state_kernel[launch.grid](
        k, v, cos, sin, launch.items, kv, ksum, *k.stride()[:3], *shape, **launch.meta, **tk.STATE_LAUNCH
    )
    return kv, ksum


def _prefix_states(kv, ksum, launch: Plan, past_kv, past_k) -> tuple[torch.Tensor, torch.Tensor]:
    """The state each chunk's queries see: the running sum over chunks (plus the cache's past)."""
    kv, ksum = kv.cumsum(dim=2), ksum.cumsum(dim=2)
    if launch.meta["PARTIALS"]:  # per-item sums -> running sums at each chunk's last item
        kv, ksum = kv.index_select(2, launch.chunk_last_item), ksum.index_select(2, launch.chunk_last_item)
    if past_kv is not None:
        kv = kv + past_kv.float()[:, :, None]
        ksum = ksum + past_k.float()[:, :, None]
    return kv, ksum


def _output_pass(q, cos, sin, kv, ksum, eps: float, launch: Plan) -> torch.Tensor:
    _, _, heads, dim = q.shape
    out = torch.empty_like(q)
    shape = (heads, dim, dim // 2, launch.chunks, launch.size_class)
    tk.output_kernel[launch.grid](
        q, out, cos, sin, launch.items, kv, ksum, eps, *q.stride()[:3], *out.stride()[:3], *shape,
        **launch.meta, **tk.OUTPUT_LAUNCH,
    )  # fmt: skip
    return out


def launch_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float,
    chunk_tokens: tuple[int, ...],
    past_kv: torch.Tensor | None = None,
    past_k: torch.Tensor | None = None,
    fast_bf16: bool = False,
    variant: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns out (B, N, heads, d) in q's dtype and the prefix states (B, heads, chunks, d, d) and
    (B, heads, chunks, d) after each chunk, fp32."""
    q, k, v = same_layout(q, k, v)
    cos, sin = rope_operands(cos, sin)
    launch = plan(q, chunk_tokens, fast_bf16, variant)
    kv, ksum = _prefix_states(*_state_pass(k, v, cos, sin, launch), launch, past_kv, past_k)
    return _output_pass(q, cos, sin, kv, ksum, eps, launch), kv, ksum


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
    out, kv, ksum = launch_forward(
        q, k, v, cos, sin, eps, tuple(chunk_tokens), past_kv, past_k, fast_bf16, variant
    )
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
