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
def _work_item(items_ptr, item):
    """(chunk, first token, end token) of a work item of the (items, 3) table."""
    return tl.load(items_ptr + 3 * item), tl.load(items_ptr + 3 * item + 1), tl.load(items_ptr + 3 * item + 2)


@triton.jit
def _head_offset(bh, H, stride_b, stride_h):
    return (bh // H).to(tl.int64) * stride_b + (bh % H) * stride_h


@triton.jit
def _rows(head, n0, end, stride_n, BLOCK_N: tl.constexpr):
    """Token indices of the tile starting at n0, their mask and their row offsets (BLOCK_N, 1)."""
    rows = n0 + tl.arange(0, BLOCK_N)
    return rows, rows < end, head + rows[:, None].to(tl.int64) * stride_n


@triton.jit
def _load_rows(ptr, row_offsets, row_mask, offs_d, D):
    mask = row_mask[:, None] & (offs_d[None, :] < D)
    return tl.load(ptr + row_offsets + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _store_rows(ptr, row_offsets, row_mask, offs_d, D, value):
    mask = row_mask[:, None] & (offs_d[None, :] < D)
    tl.store(ptr + row_offsets + offs_d[None, :], value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotated_pairs(ptr, cos_ptr, sin_ptr, rows, row_mask, row_offsets, offs_p, HALF,
                   BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, STRIDED: tl.constexpr):  # fmt: skip
    """A tile's even and odd channels (fp32) and the same pairs rotated by RoPE."""
    even, odd = _split_pairs(ptr, row_offsets, row_mask, offs_p, HALF, BLOCK_N, BLOCK_P, STRIDED)
    r_even, r_odd = _rotate(even, odd, cos_ptr, sin_ptr, rows, row_mask, offs_p, HALF)
    return even, odd, r_even, r_odd


@triton.jit
def _normaliser(even, odd, sum_even, sum_odd, eps):
    """Per token x · Σk + ε over the un-rotated pairs."""
    return tl.sum(even * sum_even[None, :], axis=1) + tl.sum(odd * sum_odd[None, :], axis=1) + eps


@triton.jit
def _outer_dot(at, b, acc, PRECISION: tl.constexpr):
    """acc + at·b where at is exact in its dtype (bf16 loaded from memory, or fp32 for IEEE) and b is fp32:
    SPLIT takes b as bf16 hi + lo (two tensor-core dots), BF16 b rounded (one), IEEE one exact fp32 dot."""
    if PRECISION == SPLIT:
        hi, lo = _hi_lo(b)
        acc = _bf16_dot(at, lo, acc)
        acc = _bf16_dot(at, hi, acc)
    elif PRECISION == BF16:
        acc = _bf16_dot(at, b.to(tl.bfloat16), acc)
    else:
        acc = tl.dot(at, b, acc, input_precision="ieee")
    return acc


@triton.jit
def _state_pairs(kv_ptr, state, D, offs_d, offs_p, HALF, TRANSPOSED: tl.constexpr):
    """The even and odd key columns of one (d_v, d_k) fp32 state: (BLOCK_D, BLOCK_P) each, or transposed
    (BLOCK_P, BLOCK_D): [p, e] = state[e, 2p (+1)]."""
    pair_mask = offs_p < HALF
    if TRANSPOSED:
        offsets = state * D * D + offs_d[None, :] * D + 2 * offs_p[:, None]
        mask = pair_mask[:, None] & (offs_d[None, :] < D)
    else:
        offsets = state * D * D + offs_d[:, None] * D + 2 * offs_p[None, :]
        mask = (offs_d[:, None] < D) & pair_mask[None, :]
    even = tl.load(kv_ptr + offsets, mask=mask, other=0.0)
    return even, tl.load(kv_ptr + offsets + 1, mask=mask, other=0.0)


@triton.jit
def _sum_pairs(ksum_ptr, state, D, offs_p, HALF):
    """The even and odd channels of one (d_k,) fp32 key sum."""
    pair_mask = offs_p < HALF
    even = tl.load(ksum_ptr + state * D + 2 * offs_p, mask=pair_mask, other=0.0)
    return even, tl.load(ksum_ptr + state * D + 2 * offs_p + 1, mask=pair_mask, other=0.0)


@triton.jit
def _write_state(kv_ptr, ksum_ptr, state, kv_even, kv_odd, sum_even, sum_odd, D, offs_d, offs_p, HALF,
                 STORE: tl.constexpr):  # fmt: skip
    """Store (STORE: the slot is the item's own) or atomically add a state and key sum from their pair
    halves (several items share the slot)."""
    pair_mask = offs_p < HALF
    kv_offsets = state * D * D + offs_d[:, None] * D + 2 * offs_p[None, :]
    kv_mask = (offs_d[:, None] < D) & pair_mask[None, :]
    k_offsets = state * D + 2 * offs_p
    if STORE:
        tl.store(kv_ptr + kv_offsets, kv_even, mask=kv_mask)
        tl.store(kv_ptr + kv_offsets + 1, kv_odd, mask=kv_mask)
        tl.store(ksum_ptr + k_offsets, sum_even, mask=pair_mask)
        tl.store(ksum_ptr + k_offsets + 1, sum_odd, mask=pair_mask)
    else:
        tl.atomic_add(kv_ptr + kv_offsets, kv_even, mask=kv_mask)
        tl.atomic_add(kv_ptr + kv_offsets + 1, kv_odd, mask=kv_mask)
        tl.atomic_add(ksum_ptr + k_offsets, sum_even, mask=pair_mask)
        tl.atomic_add(ksum_ptr + k_offsets + 1, sum_odd, mask=pair_mask)


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
    bh, item = tl.program_id(0), tl.program_id(1)
    chunk, start, end = _work_item(items_ptr, item)
    BLOCK_P: tl.constexpr = BLOCK_D // 2
    offs_d, offs_p = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_P)
    kv_even = tl.zeros((BLOCK_D, BLOCK_P), dtype=tl.float32)
    kv_odd = tl.zeros((BLOCK_D, BLOCK_P), dtype=tl.float32)
    k_even_sum = tl.zeros((BLOCK_P,), dtype=tl.float32)
    k_odd_sum = tl.zeros((BLOCK_P,), dtype=tl.float32)
    head = _head_offset(bh, H, stride_b, stride_h)
    for n0 in range(start, end, BLOCK_N):
        rows, row_mask, row_offsets = _rows(head, n0, end, stride_n, BLOCK_N)
        k_even, k_odd, rk_even, rk_odd = _rotated_pairs(
            k_ptr, cos_ptr, sin_ptr, rows, row_mask, row_offsets, offs_p, HALF, BLOCK_N, BLOCK_P, STRIDED
        )
        vt = tl.trans(_load_rows(v_ptr, row_offsets, row_mask, offs_d, D))
        kv_even = _outer_dot(vt, rk_even, kv_even, PRECISION)
        kv_odd = _outer_dot(vt, rk_odd, kv_odd, PRECISION)
        k_even_sum += tl.sum(k_even, axis=0)
        k_odd_sum += tl.sum(k_odd, axis=0)
    # Atomics add the item's sums into its chunk's slot; PARTIALS stores them into the item's own slot
    # (the host sums them), which trades the atomics for B·heads·items·d² fp32 bytes written and read once.
    state = bh.to(tl.int64) * SLOTS + (item if PARTIALS else chunk)
    _write_state(kv_ptr, ksum_ptr, state, kv_even, kv_odd, k_even_sum, k_odd_sum, D, offs_d, offs_p, HALF,
                 PARTIALS)  # fmt: skip


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
def _exact_split_dot(a, b_hi, b_lo, acc, PRECISION: tl.constexpr):
    """acc + a·b with a exact in its dtype (bf16 from memory, or fp32 for IEEE) and b = b_hi + b_lo."""
    if PRECISION == SPLIT:
        acc = _bf16_dot(a, b_lo, acc)
        acc = _bf16_dot(a, b_hi, acc)
    elif PRECISION == BF16:
        acc = _bf16_dot(a, b_hi, acc)
    else:
        acc = tl.dot(a, b_hi, acc, input_precision="ieee")
    return acc


@triton.jit
def _operand(x, PRECISION: tl.constexpr):
    """A loop-invariant fp32 operand as (hi, lo) for `_split_dot`/`_exact_split_dot` under PRECISION."""
    if PRECISION == SPLIT:
        hi, lo = _hi_lo(x)
    elif PRECISION == BF16:
        hi, lo = x.to(tl.bfloat16), x
    else:
        hi, lo = x, x
    return hi, lo


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
    bh, item = tl.program_id(0), tl.program_id(1)
    chunk, start, end = _work_item(items_ptr, item)
    BLOCK_P: tl.constexpr = BLOCK_D // 2
    offs_d, offs_p = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_P)
    state = bh.to(tl.int64) * CHUNKS + chunk
    # The chunk's prefix state, transposed: kvt_even[p, e] = Σ v_e·RoPE(k)_{2p}.
    kvt_even, kvt_odd = _state_pairs(kv_ptr, state, D, offs_d, offs_p, HALF, True)
    even_hi, even_lo = _operand(kvt_even, PRECISION)
    odd_hi, odd_lo = _operand(kvt_odd, PRECISION)
    k_even_sum, k_odd_sum = _sum_pairs(ksum_ptr, state, D, offs_p, HALF)
    head = _head_offset(bh, H, stride_b, stride_h)
    out_head = _head_offset(bh, H, out_stride_b, out_stride_h)
    for n0 in range(start, end, BLOCK_N):
        rows, row_mask, row_offsets = _rows(head, n0, end, stride_n, BLOCK_N)
        q_even, q_odd, rq_even, rq_odd = _rotated_pairs(
            q_ptr, cos_ptr, sin_ptr, rows, row_mask, row_offsets, offs_p, HALF, BLOCK_N, BLOCK_P, STRIDED
        )
        numerator = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        numerator = _split_dot(rq_even, even_hi, even_lo, numerator, PRECISION)
        numerator = _split_dot(rq_odd, odd_hi, odd_lo, numerator, PRECISION)
        out = numerator * (1.0 / _normaliser(q_even, q_odd, k_even_sum, k_odd_sum, eps))[:, None]
        _, _, out_offsets = _rows(out_head, n0, end, out_stride_n, BLOCK_N)
        _store_rows(o_ptr, out_offsets, row_mask, offs_d, D, out)


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
