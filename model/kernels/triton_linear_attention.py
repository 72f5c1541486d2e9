"""Triton kernels of the ReLU linear-attention core with 3D RoPE applied inside (forward).

Same function as `model.attention.linear_attention` (read its docstring for the formula): the numerator uses
RoPE'd q and k, the normaliser the un-rotated ones, both state sums in fp32. Two passes over the tokens, each
split into work items (a token range inside one chunk of frames) so that B·heads·items programs fill the GPU:

1. `_state_kernel`: per item, Σ v·RoPE(k)ᵀ (d_v × d_k) and Σ k over its tokens, added atomically (fp32) into
   the state of its chunk. Reads k and v once.
2. (host) prefix sum of the chunk states, plus the cache's past state: the state each chunk's queries see.
3. `_output_kernel`: per item, o = (RoPE(q) · stateᵀ) / (q · Σk + ε) with its chunk's prefix state kept in
   registers for the whole item. Reads q once, writes o once.

So q, k, v are read once and o written once (the bandwidth floor), plus the fp32 RoPE tables (shared by all
heads, served from L2) and the small per-chunk states.

Precision: RoPE, the normaliser and the division are fp32. The two contractions run on tensor cores: with
bf16 inputs every fp32 operand is split into bf16 hi + lo parts (v is exact in bf16), so each product is
accurate to ~2^-16 (dropping only lo·lo) and the result is as close to an fp64 reference as the fp32 PyTorch
path is, before the final rounding to bf16; fp32 inputs use exact fp32 (`ieee`) dots. Plain bf16 dots
(`BF16`) would be ~13% further from fp64 than the PyTorch path (measured on CPU, 2B head dims); the split
costs ~3x the tensor-core work, which at d = 112 brings the output pass near the H200's ridge point. The atomic adds make
the state's summation order, and so its last bits, vary between runs.

Designed for a backward (the training-speed issue): what it needs is q, k, v (inputs), the per-chunk prefix
states (returned, B·heads·chunks·d² fp32, small) and the per-token normaliser q·Σk + ε, which is one dot per
token and cheaper to recompute in the backward's own pass over q than to store.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRETING: tl.constexpr = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")
# Launch variants (tokens per inner-loop tile, stride-2 pair loads), timed side by side by
# benchmarks/inference.py; work items are whole multiples of the tile. DEFAULT_VARIANT is the fastest there.
VARIANTS = {
    "n64-split": {"BLOCK_N": 64, "STRIDED": False, "PARTIALS": False},
    "n64-strided-partials": {"BLOCK_N": 64, "STRIDED": True, "PARTIALS": True},
    "n128-strided-partials": {"BLOCK_N": 128, "STRIDED": True, "PARTIALS": True},
}
DEFAULT_VARIANT = "n64-split"
# How the two contractions are taken (`PRECISION`): exact fp32 dots (fp32 inputs); bf16 hi/lo split operands
# (bf16 inputs: the PyTorch path's accuracy); single bf16 dots (faster, ~13% more error than the PyTorch path
# at the 2B shapes; timed by the benchmark, not used by the model).
IEEE: tl.constexpr = tl.constexpr(0)
SPLIT: tl.constexpr = tl.constexpr(1)
BF16: tl.constexpr = tl.constexpr(2)


@triton.jit
def _split_pairs(ptr, row_offsets, row_mask, offs_p, HALF, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
                 STRIDED: tl.constexpr):  # fmt: skip
    """The even and odd channels (interleaved RoPE pairs) of a (BLOCK_N, 2·BLOCK_P) tile, as fp32: two
    stride-2 loads (STRIDED; the second hits the lines the first brought in) or one load split in registers."""
    if STRIDED:
        mask = row_mask[:, None] & (offs_p[None, :] < HALF)
        even = tl.load(ptr + row_offsets + 2 * offs_p[None, :], mask=mask, other=0.0).to(tl.float32)
        odd = tl.load(ptr + row_offsets + 2 * offs_p[None, :] + 1, mask=mask, other=0.0).to(tl.float32)
        return even, odd
    offs_d = tl.arange(0, 2 * BLOCK_P)
    mask = row_mask[:, None] & (offs_d[None, :] < 2 * HALF)
    tile = tl.load(ptr + row_offsets + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    return tl.split(tl.reshape(tile, (BLOCK_N, BLOCK_P, 2)))


@triton.jit
def _rotate(even, odd, cos_ptr, sin_ptr, rows, row_mask, offs_p, HALF):
    """RoPE of (BLOCK_N, BLOCK_P) even/odd channel pairs by the tables' rows (cos, sin are (N, HALF) fp32)."""
    table = rows[:, None] * HALF + offs_p[None, :]
    mask = row_mask[:, None] & (offs_p[None, :] < HALF)
    cos = tl.load(cos_ptr + table, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + table, mask=mask, other=0.0)
    return even * cos - odd * sin, even * sin + odd * cos


@triton.jit
def _bf16_dot(a, b, acc):
    """acc + a·b of bf16 tiles on tensor cores (fp32 accumulate). The CPU interpreter's bf16 dot is wrong
    (triton 3.8), so there the same exact products are taken in fp32."""
    if INTERPRETING:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _hi_lo(x):
    hi = x.to(tl.bfloat16)
    return hi, (x - hi.to(tl.float32)).to(tl.bfloat16)


@triton.jit
def _state_kernel(
    k_ptr,
    v_ptr,
    cos_ptr,
    sin_ptr,
    items_ptr,
    kv_ptr,
    ksum_ptr,
    stride_b,
    stride_n,
    stride_h,
    H,
    D,
    HALF,
    SLOTS,
    SIZE_CLASS,  # log2 of the tokens of all heads: only an autotuning key (large and small problems differ)
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    STRIDED: tl.constexpr,
    PARTIALS: tl.constexpr,
):
    bh = tl.program_id(0)
    item = tl.program_id(1)
    b = bh // H
    h = bh % H
    chunk = tl.load(items_ptr + 3 * item)
    start = tl.load(items_ptr + 3 * item + 1)
    end = tl.load(items_ptr + 3 * item + 2)
    BLOCK_P: tl.constexpr = BLOCK_D // 2
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, BLOCK_P)
    kv_even = tl.zeros((BLOCK_D, BLOCK_P), dtype=tl.float32)
    kv_odd = tl.zeros((BLOCK_D, BLOCK_P), dtype=tl.float32)
    k_even_sum = tl.zeros((BLOCK_P,), dtype=tl.float32)
    k_odd_sum = tl.zeros((BLOCK_P,), dtype=tl.float32)
    head = b.to(tl.int64) * stride_b + h * stride_h
    for n0 in range(start, end, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        row_mask = rows < end
        offsets = head + rows[:, None].to(tl.int64) * stride_n + offs_d[None, :]
        mask = row_mask[:, None] & (offs_d[None, :] < D)
        row_offsets = head + rows[:, None].to(tl.int64) * stride_n
        k_even, k_odd = _split_pairs(k_ptr, row_offsets, row_mask, offs_p, HALF, BLOCK_N, BLOCK_P, STRIDED)
        rk_even, rk_odd = _rotate(k_even, k_odd, cos_ptr, sin_ptr, rows, row_mask, offs_p, HALF)
        v = tl.load(v_ptr + offsets, mask=mask, other=0.0)
        vt = tl.trans(v)
        if PRECISION == SPLIT:
            hi, lo = _hi_lo(rk_even)
            kv_even = _bf16_dot(vt, lo, kv_even)
            kv_even = _bf16_dot(vt, hi, kv_even)
            hi, lo = _hi_lo(rk_odd)
            kv_odd = _bf16_dot(vt, lo, kv_odd)
            kv_odd = _bf16_dot(vt, hi, kv_odd)
        elif PRECISION == BF16:
            kv_even = _bf16_dot(vt, rk_even.to(tl.bfloat16), kv_even)
            kv_odd = _bf16_dot(vt, rk_odd.to(tl.bfloat16), kv_odd)
        else:
            kv_even = tl.dot(vt, rk_even, kv_even, input_precision="ieee")
            kv_odd = tl.dot(vt, rk_odd, kv_odd, input_precision="ieee")
        k_even_sum += tl.sum(k_even, axis=0)
        k_odd_sum += tl.sum(k_odd, axis=0)
    # Atomics add the item's sums into its chunk's slot; PARTIALS stores them into the item's own slot
    # (the host sums them), which trades the atomics for B·heads·items·d² fp32 bytes written and read once.
    state = bh.to(tl.int64) * SLOTS + (item if PARTIALS else chunk)
    pair_mask = offs_p < HALF
    kv_offsets = state * D * D + offs_d[:, None] * D + 2 * offs_p[None, :]
    kv_mask = (offs_d[:, None] < D) & pair_mask[None, :]
    k_offsets = state * D + 2 * offs_p
    if PARTIALS:
        tl.store(kv_ptr + kv_offsets, kv_even, mask=kv_mask)
        tl.store(kv_ptr + kv_offsets + 1, kv_odd, mask=kv_mask)
        tl.store(ksum_ptr + k_offsets, k_even_sum, mask=pair_mask)
        tl.store(ksum_ptr + k_offsets + 1, k_odd_sum, mask=pair_mask)
    else:
        tl.atomic_add(kv_ptr + kv_offsets, kv_even, mask=kv_mask)
        tl.atomic_add(kv_ptr + kv_offsets + 1, kv_odd, mask=kv_mask)
        tl.atomic_add(ksum_ptr + k_offsets, k_even_sum, mask=pair_mask)
        tl.atomic_add(ksum_ptr + k_offsets + 1, k_odd_sum, mask=pair_mask)


@triton.jit
def _split_dot(a, b_hi, b_lo, acc, PRECISION: tl.constexpr):
    """acc + a·b with fp32 a and b = b_hi + b_lo: SPLIT takes three bf16 tensor-core dots (all but lo·lo);
    BF16 one (b_hi = b rounded); IEEE one exact fp32 dot (b_hi = b)."""
    if PRECISION == SPLIT:
        a_hi, a_lo = _hi_lo(a)
        acc = _bf16_dot(a_lo, b_hi, acc)
        acc = _bf16_dot(a_hi, b_lo, acc)
        acc = _bf16_dot(a_hi, b_hi, acc)
    elif PRECISION == BF16:
        acc = _bf16_dot(a.to(tl.bfloat16), b_hi, acc)
    else:
        acc = tl.dot(a, b_hi, acc, input_precision="ieee")
    return acc


@triton.jit
def _output_kernel(
    q_ptr,
    o_ptr,
    cos_ptr,
    sin_ptr,
    items_ptr,
    kv_ptr,
    ksum_ptr,
    eps,
    stride_b,
    stride_n,
    stride_h,
    out_stride_b,
    out_stride_n,
    out_stride_h,
    H,
    D,
    HALF,
    CHUNKS,
    SIZE_CLASS,  # log2 of the tokens of all heads: only an autotuning key (large and small problems differ)
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    STRIDED: tl.constexpr,
    PARTIALS: tl.constexpr,  # unused here: the state kernel's variant flag, passed to both for one launch dict
):
    bh = tl.program_id(0)
    item = tl.program_id(1)
    b = bh // H
    h = bh % H
    chunk = tl.load(items_ptr + 3 * item)
    start = tl.load(items_ptr + 3 * item + 1)
    end = tl.load(items_ptr + 3 * item + 2)
    BLOCK_P: tl.constexpr = BLOCK_D // 2
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, BLOCK_P)
    pair_mask = offs_p < HALF
    state = bh.to(tl.int64) * CHUNKS + chunk
    # The chunk's prefix state, transposed: kvt_even[p, e] = Σ v_e·RoPE(k)_{2p}.
    kvt_offsets = state * D * D + offs_d[None, :] * D + 2 * offs_p[:, None]
    kvt_mask = pair_mask[:, None] & (offs_d[None, :] < D)
    kvt_even = tl.load(kv_ptr + kvt_offsets, mask=kvt_mask, other=0.0)
    kvt_odd = tl.load(kv_ptr + kvt_offsets + 1, mask=kvt_mask, other=0.0)
    if PRECISION == SPLIT:
        even_hi, even_lo = _hi_lo(kvt_even)
        odd_hi, odd_lo = _hi_lo(kvt_odd)
    elif PRECISION == BF16:
        even_hi, even_lo = kvt_even.to(tl.bfloat16), kvt_even
        odd_hi, odd_lo = kvt_odd.to(tl.bfloat16), kvt_odd
    else:
        even_hi, even_lo = kvt_even, kvt_even
        odd_hi, odd_lo = kvt_odd, kvt_odd
    k_even_sum = tl.load(ksum_ptr + state * D + 2 * offs_p, mask=pair_mask, other=0.0)
    k_odd_sum = tl.load(ksum_ptr + state * D + 2 * offs_p + 1, mask=pair_mask, other=0.0)
    head = b.to(tl.int64) * stride_b + h * stride_h
    out_head = b.to(tl.int64) * out_stride_b + h * out_stride_h
    for n0 in range(start, end, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        row_mask = rows < end
        mask = row_mask[:, None] & (offs_d[None, :] < D)
        row_offsets = head + rows[:, None].to(tl.int64) * stride_n
        q_even, q_odd = _split_pairs(q_ptr, row_offsets, row_mask, offs_p, HALF, BLOCK_N, BLOCK_P, STRIDED)
        rq_even, rq_odd = _rotate(q_even, q_odd, cos_ptr, sin_ptr, rows, row_mask, offs_p, HALF)
        numerator = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        numerator = _split_dot(rq_even, even_hi, even_lo, numerator, PRECISION)
        numerator = _split_dot(rq_odd, odd_hi, odd_lo, numerator, PRECISION)
        denominator = tl.sum(q_even * k_even_sum[None, :], axis=1) + tl.sum(
            q_odd * k_odd_sum[None, :], axis=1
        )
        out = numerator * (1.0 / (denominator + eps))[:, None]
        out_offsets = out_head + rows[:, None].to(tl.int64) * out_stride_n + offs_d[None, :]
        tl.store(o_ptr + out_offsets, out.to(o_ptr.dtype.element_ty), mask=mask)


def _tuned(kernel, reset: list[str] | None = None):
    """Autotune warps and pipelining depth on the GPU (keyed by head dim, precision and token-count scale);
    the interpreter runs the plain kernel with one configuration."""
    if INTERPRETING.value:
        return kernel, {"num_warps": 4}
    configs = [
        triton.Config({}, num_warps=warps, num_stages=stages) for warps in (4, 8) for stages in (1, 2, 3)
    ]
    tuned = triton.autotune(
        configs, key=["D", "PRECISION", "BLOCK_N", "STRIDED", "PARTIALS", "SIZE_CLASS"], reset_to_zero=reset
    )(kernel)
    return tuned, {}


state_kernel, STATE_LAUNCH = _tuned(_state_kernel, reset=["kv_ptr", "ksum_ptr"])
output_kernel, OUTPUT_LAUNCH = _tuned(_output_kernel)
