"""Checks of the fused linear-attention kernel against an fp64 reference, shared by tests/test_model_kernels.py
and benchmarks/inference.py (which runs them on the GPU before timing anything).

The reference is `model.attention.linear_attention`'s formula evaluated in float64 (that function itself
computes in fp32); the PyTorch path is checked against the same reference so that the fused kernel's error
can be compared with it: fp32 inputs must stay far under 1e-4 relative, bf16 inputs as close as the PyTorch
path's output rounded to bf16 (what the model uses), and nothing may be NaN. The gradient checks
(`run_checks(..., gradients=True)`) compare dq, dk, dv of the fused backward the same way against autograd
through the fp64 reference (benchmarks/training_kernels.py runs them on the GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from model.attention import linear_attention
from model.rope import rope_tables


def rope_fp64(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    a, b = x.double().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos.double()[:, None, :], sin.double()[:, None, :]
    return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)


def reference_fp64(q, k, v, rope, eps, chunk_tokens=None, past=None):
    """Output (fp64) and final state of linear attention, every operation in float64."""
    q, k, v = q.double(), k.double(), v.double()
    q_rot, k_rot = rope_fp64(q, *rope), rope_fp64(k, *rope)
    batch, tokens, heads, dim = q.shape
    if past is None:
        kv, ks = q.new_zeros(batch, heads, dim, dim), q.new_zeros(batch, heads, dim)
    else:
        kv, ks = past[0].double(), past[1].double()
    outputs = []
    for qc, qrc, kc, krc, vc in zip(
        *(t.split(chunk_tokens or [tokens], 1) for t in (q, q_rot, k, k_rot, v)), strict=True
    ):
        kv = kv + torch.einsum("bnhd,bnhe->bhed", krc, vc)
        ks = ks + kc.sum(1)
        num = torch.einsum("bhed,bnhd->bnhe", kv, qrc)
        outputs.append(num / (torch.einsum("bhd,bnhd->bnh", ks, qc) + eps)[..., None])
    return torch.cat(outputs, 1), (kv, ks)


@dataclass
class Case:
    batch: int
    grid: tuple[int, int, int]  # token frames, rows, columns
    heads: int
    dim: int
    chunk_frames: list[int] | None = None  # block-causal chunks, in frames
    cached: bool = False  # start from a random past state and frame offset


CASES = [
    Case(1, (3, 5, 7), 2, 112),  # 105 tokens: odd, not a multiple of the tile
    Case(2, (4, 9, 13), 3, 112, chunk_frames=[3, 1]),  # odd chunk sizes (351 / 117 tokens)
    Case(1, (5, 6, 11), 2, 112, chunk_frames=[1, 2, 2], cached=True),
    Case(1, (5, 6, 11), 2, 112, chunk_frames=[1, 2, 2]),  # uneven first chunk (block-causal training)
    Case(2, (2, 17, 31), 4, 64, cached=True),  # another head dim, 1,054 tokens
    Case(1, (7, 15, 26), 5, 112),  # 2,730 tokens: several work items per head
]


def _relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref).norm() / ref.norm()).item()


def _inputs(case: Case, dtype: torch.dtype, device: torch.device, seed: int):
    """Random φ-features q, k, values v, RoPE tables, optional past state and chunk token counts of a case."""
    gen = torch.Generator().manual_seed(seed)
    frames, height, width = case.grid
    split = (case.dim - 4 * (case.dim // 6), 2 * (case.dim // 6), 2 * (case.dim // 6))
    offset = 4 if case.cached else 0
    rope = rope_tables(case.grid, split, 10000.0, 1024, frame_offset=offset, device=device)
    shape = (case.batch, frames * height * width, case.heads, case.dim)
    q, k = (torch.randn(shape, generator=gen).relu().to(device, dtype) for _ in range(2))
    v = torch.randn(shape, generator=gen).to(device, dtype)
    past = None
    if case.cached:
        state_shape = (case.batch, case.heads, case.dim)
        past_kv = torch.randn(*state_shape, case.dim, generator=gen) * 30
        past = (past_kv.to(device), (torch.rand(state_shape, generator=gen) * 200).to(device))
    chunk_tokens = [f * height * width for f in case.chunk_frames] if case.chunk_frames else None
    return q, k, v, rope, past, chunk_tokens


def _name(case: Case) -> str:
    return f"B{case.batch} grid{case.grid} H{case.heads} d{case.dim} chunks{case.chunk_frames}" + (
        " cached" if case.cached else ""
    )


def run_case(case: Case, dtype: torch.dtype, device: torch.device, seed: int) -> dict:
    """Errors of the fused kernel and of the PyTorch path against fp64 for one case, on fresh random inputs."""
    from model.kernels.linear_attention import fused_linear_attention

    q, k, v, rope, past, chunk_tokens = _inputs(case, dtype, device, seed)
    ref, (ref_kv, ref_k) = reference_fp64(q, k, v, rope, 1e-15, chunk_tokens, past)
    torch_out, _ = linear_attention(q, k, v, rope, 1e-15, chunk_tokens, past)
    fused_out, (kv, ks) = fused_linear_attention(q, k, v, rope, 1e-15, chunk_tokens, past)
    return {
        "case": _name(case),
        "dtype": str(dtype).removeprefix("torch."),
        "fused": _relative(fused_out, ref),
        "torch": _relative(torch_out.to(dtype), ref),
        "state": max(_relative(kv, ref_kv), _relative(ks, ref_k)),
        "out_dtype_ok": fused_out.dtype == dtype,
        "finite": bool(torch.isfinite(fused_out).all()),
    }


def _grads(attend, q, k, v, grad_out) -> list[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, _ = attend(*leaves)
    out.to(grad_out.dtype).backward(grad_out)
    return [t.grad for t in leaves]


def run_grad_case(case: Case, dtype: torch.dtype, device: torch.device, seed: int) -> dict:
    """Errors of dq, dk, dv of the fused backward and of the PyTorch path's autograd against autograd of the
    fp64 reference, for one (uncached) case and a random output gradient."""
    from model.kernels.linear_attention_training import trainable_linear_attention

    q, k, v, rope, _, chunks = _inputs(case, dtype, device, seed)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1000)).to(device, dtype)
    ref = _grads(lambda *t: reference_fp64(*t, rope, 1e-15, chunks), q.double(), k.double(), v.double(),
                 grad_out.double())  # fmt: skip
    plain = _grads(lambda *t: linear_attention(*t, rope, 1e-15, chunks), q, k, v, grad_out)
    fused = _grads(lambda *t: trainable_linear_attention(*t, rope, 1e-15, chunks), q, k, v, grad_out)
    return {
        "case": _name(case),
        "dtype": str(dtype).removeprefix("torch."),
        "fused": max(_relative(g, r) for g, r in zip(fused, ref, strict=True)),
        "torch": max(_relative(g, r) for g, r in zip(plain, ref, strict=True)),
        "out_dtype_ok": all(g.dtype == dtype for g in fused),
        "finite": all(bool(torch.isfinite(g).all()) for g in fused),
    }


def passes(row: dict) -> bool:
    """fp32: far under 1e-4 (and the state under 1e-6); bf16: no worse than the PyTorch path rounded to bf16
    (2% slack for the noise of a rounding-dominated error), the state under 2e-5 (hi/lo split products);
    never NaN. Triton's CPU interpreter truncates fp32 to bf16 instead of rounding to nearest, which doubles
    the output's rounding error: there bf16 may be up to 2.2× the PyTorch path."""
    if not (row["finite"] and row["out_dtype_ok"]):
        return False
    if row["dtype"] == "float32":
        return row["fused"] < 1e-5 and row["state"] < 1e-6
    slack = 2.2 if os.environ.get("TRITON_INTERPRET") == "1" else 1.02
    return row["fused"] <= slack * row["torch"] and row["state"] < 2e-5


def grad_passes(row: dict) -> bool:
    """fp32: far under 1e-4; bf16: within 1.3× the PyTorch path's error (the backward has more roundings
    to bf16 between its passes than the forward; 2.2× under the CPU interpreter, see `passes`) and under
    1e-2; never NaN."""
    if not (row["finite"] and row["out_dtype_ok"]):
        return False
    if row["dtype"] == "float32":
        return row["fused"] < 1e-5
    slack = 2.2 if os.environ.get("TRITON_INTERPRET") == "1" else 1.3
    return row["fused"] <= slack * row["torch"] and row["fused"] < 1e-2


def run_checks(device: torch.device, cases: list[Case] = CASES, gradients: bool = False) -> list[dict]:
    """Forward checks of every case (or, with `gradients`, backward checks of the uncached ones)."""
    run, judge = (run_grad_case, grad_passes) if gradients else (run_case, passes)
    rows = []
    for index, case in enumerate(cases):
        if gradients and case.cached:
            continue
        for dtype in (torch.float32, torch.bfloat16):
            row = run(case, dtype, device, seed=index)
            row["pass"] = judge(row)
            rows.append(row)
    return rows
