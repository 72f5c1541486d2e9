"""Triton kernels of the linear-attention core's backward (bidirectional and block-causal; no past state).

Forward (`triton_linear_attention`), for a query i of chunk c with the prefix state S_c = Σ_{j ≤ c} v_j·RoPE(k_j)ᵀ
(d_v × d_k) and z_c = Σ_{j ≤ c} k_j:

    o_i = S_c·RoPE(q_i) / den_i,   den_i = q_i·z_c + ε

With g_i = ∂L/∂o_i and R the RoPE rotation (orthogonal per channel pair, so its adjoint Rᵀ rotates back):

    ∂L/∂q_i = Rᵀ(S_cᵀ g_i / den_i) + dden_i·z_c,            dden_i = -(g_i·o_i)/den_i = -(RoPE(q_i)·S_cᵀg_i)/den_i²
    ∂L/∂S_c = Σ_{i ∈ c} (g_i/den_i)·RoPE(q_i)ᵀ,              ∂L/∂z_c = Σ_{i ∈ c} dden_i·q_i
    ∂L/∂k_j = Rᵀ(dSᵀ v_j) + dz,  ∂L/∂v_j = dS·RoPE(k_j)     with dS, dz the sums of ∂L/∂S_c, ∂L/∂z_c over c ≥ j's chunk

Three passes over the work items of the forward (same table, same grid):
1. `_query_grad_kernel`: dq and dden per token (dden, fp32 B·heads·N, is written for pass 2; g·o is taken as
   RoPE(q)·(S_cᵀg)/den from the product dq needs anyway, so the forward output is not kept).
2. `_state_grad_kernel`: per item, Σ g·(RoPE(q)/den)ᵀ and Σ dden·q, added atomically into its chunk's slot;
   the host turns them into suffix sums over chunks (what each key's chunk contributes to).
3. `_key_value_grad_kernel`: dk and dv with the item's chunk's suffix sums in registers.

Precision as the forward: fp32 RoPE, normaliser and division; the contractions on tensor cores with fp32
operands split into bf16 hi + lo for bf16 inputs (g and v are exact in bf16), exact fp32 dots for fp32 inputs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from model.kernels.triton_linear_attention import (
    _exact_split_dot,
    _head_offset,
    _load_rows,
    _normaliser,
    _operand,
    _outer_dot,
    _rotated_pairs,
    _rows,
    _split_dot,
    _state_pairs,
    _store_rows,
    _sum_pairs,
    _tuned,
    _work_item,
    _write_state,
)


@triton.jit
def _rotate_back(even, odd, cos_ptr, sin_ptr, rows, row_mask, offs_p, HALF):
    """The adjoint (inverse) of RoPE on (BLOCK_N, BLOCK_P) even/odd pairs."""
    table = rows[:, None] * HALF + offs_p[None, :]
    mask = row_mask[:, None] & (offs_p[None, :] < HALF)
    cos = tl.load(cos_ptr + table, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + table, mask=mask, other=0.0)
    return even * cos + odd * sin, odd * cos - even * sin


@triton.jit
def _store_pairs(ptr, row_offsets, row_mask, offs_p, HALF, even, odd, BLOCK_N: tl.constexpr,
                 BLOCK_P: tl.constexpr, STRIDED: tl.constexpr):  # fmt: skip
    """Write (BLOCK_N, BLOCK_P) even/odd channel halves back interleaved (the inverse of `_split_pairs`)."""
    if STRIDED:
        mask = row_mask[:, None] & (offs_p[None, :] < HALF)
        tl.store(ptr + row_offsets + 2 * offs_p[None, :], even.to(ptr.dtype.element_ty), mask=mask)
        tl.store(ptr + row_offsets + 2 * offs_p[None, :] + 1, odd.to(ptr.dtype.element_ty), mask=mask)
    else:
        tile = tl.reshape(tl.join(even, odd), (BLOCK_N, 2 * BLOCK_P))
        _store_rows(ptr, row_offsets, row_mask, tl.arange(0, 2 * BLOCK_P), 2 * HALF, tile)


@triton.jit
def _query_grad_kernel(
    q_ptr, g_ptr, dq_ptr, dden_ptr, cos_ptr, sin_ptr, items_ptr, kv_ptr, ksum_ptr, eps,
    stride_b, stride_n, stride_h, N, H, D, HALF, CHUNKS, SIZE_CLASS,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, STRIDED: tl.constexpr,
    PARTIALS: tl.constexpr,  # unused: the forward's variant flag, part of the shared launch dict
):  # fmt: skip
    bh, item = tl.program_id(0), tl.program_id(1)
    chunk, start, end = _work_item(items_ptr, item)
    BLOCK_P: tl.constexpr = BLOCK_D // 2
    offs_d, offs_p = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_P)
    state = bh.to(tl.int64) * CHUNKS + chunk
    s_even, s_odd = _state_pairs(kv_ptr, state, D, offs_d, offs_p, HALF, False)  # (d_v, pairs)
    even_hi, even_lo = _operand(s_even, PRECISION)
    odd_hi, odd_lo = _operand(s_odd, PRECISION)
    z_even, z_odd = _sum_pairs(ksum_ptr, state, D, offs_p, HALF)
    head = _head_offset(bh, H, stride_b, stride_h)
    for n0 in range(start, end, BLOCK_N):
        rows, row_mask, row_offsets = _rows(head, n0, end, stride_n, BLOCK_N)
        q_even, q_odd, rq_even, rq_odd = _rotated_pairs(
            q_ptr, cos_ptr, sin_ptr, rows, row_mask, row_offsets, offs_p, HALF, BLOCK_N, BLOCK_P, STRIDED
        )
        g = _load_rows(g_ptr, row_offsets, row_mask, offs_d, D)
        zero = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
        sg_even = _exact_split_dot(g, even_hi, even_lo, zero, PRECISION)  # (S_cᵀ g) by pairs
        sg_odd = _exact_split_dot(g, odd_hi, odd_lo, zero, PRECISION)
        inv = 1.0 / _normaliser(q_even, q_odd, z_even, z_odd, eps)
        dden = -tl.sum(rq_even * sg_even + rq_odd * sg_odd, axis=1) * inv * inv
        dq_even, dq_odd = _rotate_back(
            sg_even * inv[:, None], sg_odd * inv[:, None], cos_ptr, sin_ptr, rows, row_mask, offs_p, HALF
        )
        dq_even += dden[:, None] * z_even[None, :]
        dq_odd += dden[:, None] * z_odd[None, :]
        _store_pairs(dq_ptr, row_offsets, row_mask, offs_p, HALF, dq_even, dq_odd, BLOCK_N, BLOCK_P, STRIDED)
        tl.store(dden_ptr + bh.to(tl.int64) * N + rows, dden, mask=row_mask)


@triton.jit
def _state_grad_kernel(
    q_ptr, g_ptr, dden_ptr, cos_ptr, sin_ptr, items_ptr, ksum_ptr, dkv_ptr, dksum_ptr, eps,
    stride_b, stride_n, stride_h, N, H, D, HALF, CHUNKS, SIZE_CLASS,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, STRIDED: tl.constexpr,
    PARTIALS: tl.constexpr,  # unused (see _query_grad_kernel)
):  # fmt: skip
    bh, item = tl.program_id(0), tl.program_id(1)
    chunk, start, end = _work_item(items_ptr, item)
    BLOCK_P: tl.constexpr = BLOCK_D // 2
    offs_d, offs_p = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_P)
    state = bh.to(tl.int64) * CHUNKS + chunk
    z_even, z_odd = _sum_pairs(ksum_ptr, state, D, offs_p, HALF)
    ds_even = tl.zeros((BLOCK_D, BLOCK_P), dtype=tl.float32)
    ds_odd = tl.zeros((BLOCK_D, BLOCK_P), dtype=tl.float32)
    dz_even = tl.zeros((BLOCK_P,), dtype=tl.float32)
    dz_odd = tl.zeros((BLOCK_P,), dtype=tl.float32)
    head = _head_offset(bh, H, stride_b, stride_h)
    for n0 in range(start, end, BLOCK_N):
        rows, row_mask, row_offsets = _rows(head, n0, end, stride_n, BLOCK_N)
        q_even, q_odd, rq_even, rq_odd = _rotated_pairs(
            q_ptr, cos_ptr, sin_ptr, rows, row_mask, row_offsets, offs_p, HALF, BLOCK_N, BLOCK_P, STRIDED
        )
        gt = tl.trans(_load_rows(g_ptr, row_offsets, row_mask, offs_d, D))
        inv = 1.0 / _normaliser(q_even, q_odd, z_even, z_odd, eps)
        ds_even = _outer_dot(gt, rq_even * inv[:, None], ds_even, PRECISION)
        ds_odd = _outer_dot(gt, rq_odd * inv[:, None], ds_odd, PRECISION)
        dden = tl.load(dden_ptr + bh.to(tl.int64) * N + rows, mask=row_mask, other=0.0)
        dz_even += tl.sum(q_even * dden[:, None], axis=0)
        dz_odd += tl.sum(q_odd * dden[:, None], axis=0)
    _write_state(dkv_ptr, dksum_ptr, state, ds_even, ds_odd, dz_even, dz_odd, D, offs_d, offs_p, HALF, False)


@triton.jit
def _key_value_grad_kernel(
    k_ptr, v_ptr, dk_ptr, dv_ptr, cos_ptr, sin_ptr, items_ptr, dkv_ptr, dksum_ptr,
    stride_b, stride_n, stride_h, H, D, HALF, CHUNKS, SIZE_CLASS,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, STRIDED: tl.constexpr,
    PARTIALS: tl.constexpr,  # unused (see _query_grad_kernel)
):  # fmt: skip
    bh, item = tl.program_id(0), tl.program_id(1)
    chunk, start, end = _work_item(items_ptr, item)
    BLOCK_P: tl.constexpr = BLOCK_D // 2
    offs_d, offs_p = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_P)
    state = bh.to(tl.int64) * CHUNKS + chunk
    ds_even, ds_odd = _state_pairs(dkv_ptr, state, D, offs_d, offs_p, HALF, False)  # (d_v, pairs)
    even_hi, even_lo = _operand(ds_even, PRECISION)
    odd_hi, odd_lo = _operand(ds_odd, PRECISION)
    dz_even, dz_odd = _sum_pairs(dksum_ptr, state, D, offs_p, HALF)
    head = _head_offset(bh, H, stride_b, stride_h)
    for n0 in range(start, end, BLOCK_N):
        rows, row_mask, row_offsets = _rows(head, n0, end, stride_n, BLOCK_N)
        _, _, rk_even, rk_odd = _rotated_pairs(
            k_ptr, cos_ptr, sin_ptr, rows, row_mask, row_offsets, offs_p, HALF, BLOCK_N, BLOCK_P, STRIDED
        )
        v = _load_rows(v_ptr, row_offsets, row_mask, offs_d, D)
        zero = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
        dk_even, dk_odd = _rotate_back(
            _exact_split_dot(v, even_hi, even_lo, zero, PRECISION),
            _exact_split_dot(v, odd_hi, odd_lo, zero, PRECISION),
            cos_ptr, sin_ptr, rows, row_mask, offs_p, HALF,
        )  # fmt: skip
        dk_even += dz_even[None, :]
        dk_odd += dz_odd[None, :]
        _store_pairs(dk_ptr, row_offsets, row_mask, offs_p, HALF, dk_even, dk_odd, BLOCK_N, BLOCK_P, STRIDED)
        dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        dv = _split_dot(rk_even, tl.trans(even_hi), tl.trans(even_lo), dv, PRECISION)
        dv = _split_dot(rk_odd, tl.trans(odd_hi), tl.trans(odd_lo), dv, PRECISION)
        _store_rows(dv_ptr, row_offsets, row_mask, offs_d, D, dv)


query_grad_kernel, QUERY_GRAD_LAUNCH = _tuned(_query_grad_kernel)
state_grad_kernel, STATE_GRAD_LAUNCH = _tuned(_state_grad_kernel, reset=["dkv_ptr", "dksum_ptr"])
key_value_grad_kernel, KEY_VALUE_GRAD_LAUNCH = _tuned(_key_value_grad_kernel)
