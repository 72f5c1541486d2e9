"""Helpers of `benchmarks/inference.py`: timing, inputs of the attention core, byte counts, the table."""

from __future__ import annotations

import functools
import types

import torch

from benchmarks.common import timed
from model import kernels
from model.rope import rope_tables

# H200 SXM HBM3e, datasheet.
SPEC_TBS = 4.8


def timed_median(fn, device: torch.device, repeats: int, warmup: bool = True) -> float:
    """Median seconds of `repeats` calls (CUDA events on a GPU, the host clock on a CPU), after one warm-up."""
    times = timed(fn, device, repeats, warmup=int(warmup))
    return sorted(times)[len(times) // 2]


def attention_inputs(batch: int, grid: tuple[int, int, int], heads: int, dim: int, device: torch.device):
    """ReLU'd q, k and v (B, N, heads, d) in bf16 (fp32 on a CPU) and the RoPE tables of the grid."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokens = grid[0] * grid[1] * grid[2]
    gen = torch.Generator(device).manual_seed(0)
    shape = (batch, tokens, heads, dim)
    q, k = (torch.randn(shape, device=device, generator=gen).relu().to(dtype) for _ in range(2))
    v = torch.randn(shape, device=device, generator=gen).to(dtype)
    split = (dim - 4 * (dim // 6), 2 * (dim // 6), 2 * (dim // 6))
    return q, k, v, rope_tables(grid, split, 10000.0, 1024, device=device)


def diffusers_attention_core(q, k, v, grid, device):
    """diffusers' `SanaLinearAttnProcessor3_0` with identity projections and no q/k norm: what remains is its
    attention core (ReLU, RoPE, fp32 matmuls, normaliser) on the same tensors, with diffusers' RoPE tables."""
    from diffusers.models.transformers.transformer_sana_video import (
        SanaLinearAttnProcessor3_0,
        WanRotaryPosEmbed,
    )

    heads, dim = q.shape[2], q.shape[3]
    rope = WanRotaryPosEmbed(dim, (1, 2, 2), 1024).to(device)
    latents = torch.empty(1, 1, grid[0], 2 * grid[1], 2 * grid[2], device=device)
    rotary = rope(latents)
    identity = torch.nn.Identity()
    attn = types.SimpleNamespace(
        to_q=lambda x: q.flatten(2), to_k=lambda x: k.flatten(2), to_v=lambda x: v.flatten(2),
        norm_q=None, norm_k=None, heads=heads, to_out=[identity, identity],
    )  # fmt: skip
    processor = SanaLinearAttnProcessor3_0()
    hidden = q.flatten(2)
    return lambda: processor(attn, hidden, rotary_emb=rotary)


def kernel_variants(run) -> None:
    """Each launch variant: checked (bf16, block-causal and cached cases), then timed at the 480p shape;
    the fastest that passes becomes the kernel's default for the rest of the run."""
    from model.kernels import triton_linear_attention as tk
    from model.kernels.checks import CASES, passes, run_case
    from model.kernels.linear_attention import fused_linear_attention

    args, device = run.args, run.device
    path = kernels.describe_path(device, run.dtype)
    if "fused" not in path:
        run.add("kernel_variants", skipped=path)
        return
    best = None
    for name in tk.VARIANTS:
        tk.DEFAULT_VARIANT = name
        checks = [run_case(case, run.dtype, device, seed=7) for case in CASES[1:3]]
        ok = all(passes(row) for row in checks)
        row = {"variant": name, "checks_pass": ok, "worst_rel": max(r["fused"] for r in checks)}
        for batch in (1, 2):
            q, k, v, rope = attention_inputs(batch, args.token_grid, 20, 112, device)
            call = functools.partial(fused_linear_attention, q, k, v, rope, 1e-15)
            seconds = timed_median(call, device, args.attention_repeats)
            row[f"ms_batch{batch}"] = round(seconds * 1e3, 4)
        run.add("kernel_variants", **row)
        if ok and (best is None or row["ms_batch2"] < best[1]):
            best = (name, row["ms_batch2"])
    tk.DEFAULT_VARIANT = best[0] if best else "n64-split"
    run.add("kernel_variants", chosen=tk.DEFAULT_VARIANT)


def bandwidth_row(name, seconds, batch, grid, heads, dim, copy_tbs) -> dict:
    """Bytes counted as the least any implementation must move: q, k, v read once and o written once (bf16
    on a GPU) plus the fp32 cos/sin tables read once. SDPA also gets its FLOP rate (4·N²·H·d)."""
    tokens = grid[0] * grid[1] * grid[2]
    element = 2
    moved = 4 * batch * tokens * heads * dim * element + 2 * tokens * (dim // 2) * 4
    row = {
        "impl": name,
        "batch": batch,
        "tokens": tokens,
        "ms": round(seconds * 1e3, 4),
        "MB_moved": round(moved / 1e6, 1),
        "TBs": round(moved / seconds / 1e12, 3),
        "pct_of_4.8TBs": round(100 * moved / seconds / (SPEC_TBS * 1e12), 1),
        "floor_ms_at_4.8TBs": round(moved / (SPEC_TBS * 1e12) * 1e3, 4),
    }
    if copy_tbs:
        row["pct_of_measured_copy"] = round(100 * moved / seconds / (copy_tbs * 1e12), 1)
    if name.startswith("SDPA"):
        row["TFLOPs"] = round(4 * batch * tokens**2 * heads * dim / seconds / 1e12, 1)
    return row


def summary(run) -> None:
    """End to end = the 50-step transformer loop + the VAE decode (text encoding, ~0.03 s, not included)."""
    loops = {r["variant"]: r["loop_s"] for r in run.rows if r["section"] == "transformer" and "loop_s" in r}
    decode = next((r["seconds"] for r in run.rows if r["section"] == "vae_decode" and "seconds" in r), None)
    theirs = loops.get("diffusers compiled")
    for variant in ("ours compiled, fused", "ours compiled, fused, FP8"):
        if variant in loops:
            row = {"variant": variant, "loop_s": loops[variant]}
            if decode is not None:
                row["end_to_end_s"] = round(loops[variant] + decode, 2)
            if theirs:
                row["speedup_vs_diffusers_compiled"] = round(theirs / loops[variant], 2)
            run.add("summary", **row)


def print_table(rows: list[dict]) -> None:
    """The rows as one aligned text table per section (what the GPU call's output tail shows)."""
    sections: dict[str, list[dict]] = {}
    for row in rows:
        sections.setdefault(row["section"], []).append(row)
    for section, items in sections.items():
        keys = [k for k in dict.fromkeys(k for r in items for k in r) if k != "section"]
        print(f"\n== {section}")
        print(" | ".join(keys))
        for r in items:
            print(" | ".join(_short(r.get(k, "")) for k in keys))


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 else f"{value:.4g}"
    return str(value)
