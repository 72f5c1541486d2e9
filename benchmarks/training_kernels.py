"""The training-speed kernels on one GPU: gradient checks, the attention's forward+backward, and the trainer's
step with and without the fused linear-attention backward and fused AdamW, bidirectional beside block-causal.

    python -m benchmarks.training_kernels --out /tmp/training-kernels

Parts (`--parts`, default all, in this order):
- checks: `model.kernels.checks` forward and gradient checks against fp64 on the GPU (fp32 and bf16 inputs,
  bidirectional, block-causal with an uneven first chunk, cached forward); the timings mean nothing if these fail.
- attention: the linear-attention core at the preset's shape (2B 480p: batch 1, 32,760 tokens, 20 heads × 112,
  bf16), forward and forward+backward of the PyTorch path (eager, and `torch.compile`d on GPU) and of the fused
  Triton kernels; bidirectional and block-causal (`--chunk-sizes` latent frames, default 1 10 10). CUDA events.
- step: one 2B model inside DeepSpeed (`benchmarks.train_step.Bench`: the trainer's `build_engine`, ZeRO-2,
  bf16, `compile_blocks`, random latents and text fed straight to the step: what precomputed latents give),
  timing variants in the same process (one model build): PyTorch attention + torch AdamW (today's step), each
  of the fused attention backward and fused AdamW alone, both, both block-causal (per-chunk sigmas), and both
  with `--best-fraction`/`--best-budget` (less recompute) bidirectional and block-causal. A variant that runs
  out of memory is reported as such; one that would end past `--budget-s` (default 450 s from the start, so
  that the whole run stays within ~8 min) is skipped and says so.
- profile: a torch.profiler table of one step of the fastest variant that ran (OUT/profile.txt).

Writes OUT/results.json (every row) and OUT/summary.md (the tables), and prints the summary. Imports only
torch, triton, deepspeed and the project's model/training code (no Ray, no MLflow). `--toy` runs the same
parts at toy sizes (tiny preset), which is how the CPU test runs it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks import train_step
from benchmarks.common import parser as common_parser
from benchmarks.common import timed


@dataclass(frozen=True)
class Variant:
    name: str
    fused_attention: bool
    fused_adamw: bool
    block_causal: bool = False
    fewer_recomputes: bool = False  # --best-fraction instead of every block checkpointed


VARIANTS = [
    Variant("PyTorch attention, torch AdamW (today)", False, False),
    Variant("fused attention backward", True, False),
    Variant("fused AdamW", False, True),
    Variant("both", True, True),
    Variant("both, block-causal", True, True, block_causal=True),
    Variant("both, fewer recomputes", True, True, fewer_recomputes=True),
    Variant("both, fewer recomputes, block-causal", True, True, block_causal=True, fewer_recomputes=True),
]


def _timed_ms(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of fn() (CUDA events on GPU, wall clock on CPU)."""
    return statistics.median(timed(fn, device, repeats, warmup)) * 1e3


def checks(device: torch.device, toy: bool) -> list[dict]:
    from model.kernels.checks import CASES, Case, run_checks

    # The 2B head dim only (each other head dim costs the Triton compiles of every autotuning config again).
    cases = [Case(1, (3, 4, 5), 2, 32, chunk_frames=[1, 2])] if toy else [c for c in CASES if c.dim == 112]
    forward = [{"check": "forward", **row} for row in run_checks(device, cases)]
    return forward + [{"check": "gradients", **row} for row in run_checks(device, cases, gradients=True)]


def _attention_paths(device: torch.device, fused: bool) -> dict:
    from model.attention import linear_attention
    from model.kernels.linear_attention_training import trainable_linear_attention

    paths = {"pytorch": linear_attention}
    if device.type == "cuda":
        paths["pytorch compiled"] = torch.compile(linear_attention)
    if fused:
        paths["triton"] = trainable_linear_attention
    return paths


def attention(
    args: argparse.Namespace, config, grid: tuple[int, int, int], device: torch.device
) -> list[dict]:
    """Forward and forward+backward of the linear-attention core, every path, bidirectional and block-causal."""
    from model import kernels
    from model.rope import rope_tables

    frames, height, width = grid
    rope = rope_tables(grid, config.rope_split, config.rope_theta, config.rope_max_seq_len, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = (1, frames * height * width, config.num_heads, config.head_dim)
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(shape, generator=gen).relu().to(device, dtype).requires_grad_() for _ in range(2))
    v = torch.randn(shape, generator=gen).to(device, dtype).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    fused = kernels.use_fused(q, k, v, backward=True)
    rows = []
    for chunks in (None, [c * height * width for c in args.chunk_sizes]):
        for name, attend in _attention_paths(device, fused).items():

            def forward(attend=attend, chunks=chunks):
                return attend(q, k, v, rope, config.linear_attention_eps, chunks)[0].to(dtype)

            def forward_backward(forward=forward):
                q.grad = k.grad = v.grad = None
                forward().backward(grad)

            warmup, repeats = (1, 2) if args.toy else (3, 10)
            rows.append(
                {
                    "path": name,
                    "mode": "block-causal" if chunks else "bidirectional",
                    "tokens": shape[1],
                    "heads": shape[2],
                    "head_dim": shape[3],
                    "dtype": str(dtype).removeprefix("torch."),
                    "forward_ms": _timed_ms(forward, device, warmup, repeats),
                    "forward_backward_ms": _timed_ms(forward_backward, device, warmup, repeats),
                }
            )
    return rows


def _set_fused_adamw(optimizer: torch.optim.Optimizer, on: bool) -> None:
    """Switch torch's AdamW between its fused and default kernels. Its state (moments, step counters: device
    tensors for fused, CPU scalars otherwise) starts afresh: the timing does not depend on it."""
    if all(bool(group.get("fused")) == on for group in optimizer.param_groups):
        return
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = (True, None) if on else (None, None)
    optimizer.state.clear()


def _run_variant(bench: train_step.Bench, variant: Variant, args: argparse.Namespace) -> dict:
    from model import kernels

    kernels.set_attention_backend("auto" if variant.fused_attention else "torch")
    _set_fused_adamw(bench.engine.basic_optimizer, variant.fused_adamw)
    bench.engine.module.config.checkpoint_fraction = args.best_fraction if variant.fewer_recomputes else 1.0
    chunks = args.chunk_sizes if variant.block_causal else None
    bench.stage = bench.stage.replace(
        chunk_sizes=chunks, chunk_sigma_strategy="incremental" if chunks else "uniform"
    )
    row: dict = {
        **asdict(variant),
        "chunk_sizes": chunks,
        "checkpoint_fraction": bench.engine.module.config.checkpoint_fraction,
    }
    if bench.use_gpu:
        torch.cuda.reset_peak_memory_stats()
    try:
        times, first_step_s, loss = bench.time_steps(args.warmup, args.steps)
    except Exception as error:  # out of memory, or a kernel that fails here: report it, time the others
        bench.engine.optimizer.zero_grad()
        if bench.use_gpu:
            torch.cuda.empty_cache()
        oom = isinstance(error, torch.OutOfMemoryError)
        return {**row, "error": "out of memory" if oom else f"{type(error).__name__}: {error}"[:500]}
    return {**row, "first_step_s": first_step_s, "loss": loss, **bench.figures(times)}


def _run_variants(bench: train_step.Bench, args: argparse.Namespace) -> list[dict]:
    """The chosen variants in order; one that would likely end past `--budget-s` (counted from the start of
    the run; estimate: the slowest variant so far) is skipped and says so, leaving time for the profile."""
    rows, slowest = [], 0.0
    for index in args.variants:
        variant = VARIANTS[index]
        if time.monotonic() - args.started + slowest > args.budget_s:
            rows.append({**asdict(variant), "error": f"skipped: --budget-s {args.budget_s:.0f} s"})
            continue
        start = time.monotonic()
        rows.append(_run_variant(bench, variant, args))
        slowest = max(slowest, time.monotonic() - start)
    return rows


def _bench_args(args: argparse.Namespace) -> argparse.Namespace:
    size = ["--frames", "5", "--height", "32", "--width", "32", "--text-len", "8"] if args.toy else []
    return train_step.parser().parse_args(
        [
            "--preset", args.preset, *size,
            "--fused-adamw", "false",
            "--compile-memory-budget", str(args.best_budget),
            *(["--cpu"] if args.cpu else []),
            *(["--compile-blocks"] if not args.no_compile else []),
        ]
    )  # fmt: skip


def _token_grid(args: argparse.Namespace) -> tuple[int, int, int]:
    """(frames, rows, columns) of tokens of the benchmark's clip (latent frames: chunk sizes count these)."""
    from model import LinearDiTConfig
    from model.info import latent_shape

    config, sizes = LinearDiTConfig.from_preset(args.preset), _bench_args(args)
    _, frames, height, width = latent_shape(config, sizes.frames, sizes.height, sizes.width)
    pt, ph, pw = config.patch_size
    return frames // pt, height // ph, width // pw


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def summary(results: dict) -> str:
    parts = [f"# training kernels on {results['device']} ({results['date']})", ""]
    seconds = ", ".join(f"{name} {value:.0f} s" for name, value in results["part_seconds"].items())
    parts += [f"time per part: {seconds}", ""]
    for name, error in results.get("errors", {}).items():
        parts += [f"part {name} FAILED: {error.strip().splitlines()[-1]}", ""]
    if "checks_skipped" in results:
        parts += [f"checks skipped: {results['checks_skipped']}", ""]
    if "checks" in results:
        failed = [row for row in results["checks"] if not row["pass"]]
        parts += [f"checks: {len(results['checks']) - len(failed)} passed, {len(failed)} failed", ""]
        parts += [_table(results["checks"], ["check", "case", "dtype", "fused", "torch", "pass"]), ""]
    if "attention" in results:
        parts += [_table(results["attention"], ["path", "mode", "forward_ms", "forward_backward_ms"]), ""]
    if "step" in results:
        columns = ["name", "step_s_median", "tokens_per_s", "mfu", "max_memory_gib", "first_step_s", "error"]
        parts += [_table(results["step"], columns), ""]
    return "\n".join(parts)


def _parser() -> argparse.ArgumentParser:
    parser = common_parser(__doc__, preset="sana-video-2b-480p", warmup=2, steps=4)
    parser.add_argument(
        "--out", required=True, type=Path, help="Folder for results.json, summary.md, profile.txt"
    )
    parser.add_argument("--parts", nargs="+", default=["checks", "attention", "step", "profile"])
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[1, 10, 10], help="Block-causal chunks")
    parser.add_argument(
        "--best-fraction", type=float, default=0.0, help="checkpoint_fraction, fewer-recompute rows"
    )
    parser.add_argument("--best-budget", type=float, default=0.5, help="compile_memory_budget, same rows")
    parser.add_argument(
        "--variants", type=int, nargs="+", default=list(range(len(VARIANTS))), help="Step variants (indices)"
    )
    parser.add_argument("--profile-rows", type=int, default=40)
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="Skip step variants that would end past this (seconds)"
    )
    parser.add_argument("--no-compile", action="store_true", help="Eager blocks (no compile_blocks).")
    parser.add_argument("--cpu", action="store_true", help="Run on the CPU even when a GPU is present.")
    parser.add_argument("--toy", action="store_true", help="Toy sizes (tiny preset; the CPU test).")
    return parser


def _profile_fastest(bench: train_step.Bench, results: dict, args: argparse.Namespace) -> str:
    """Profile one step of the fastest step variant that ran (after one step to set it up); its name."""
    ran = [row for row in results.get("step", []) if "error" not in row]
    fastest = min(ran, key=lambda row: row["step_s_median"])["name"] if ran else VARIANTS[3].name
    variant = next(v for v in VARIANTS if v.name == fastest)
    _run_variant(bench, variant, argparse.Namespace(**{**vars(args), "warmup": 1, "steps": 1}))
    (args.out / "profile.txt").write_text(f"{variant.name}\n{bench.profile(args.profile_rows)}\n")
    return variant.name


def _write(results: dict, out: Path) -> str:
    """results.json and summary.md as they stand (after every part, so a cut-short run keeps what it did)."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = summary(results)
    (out / "summary.md").write_text(text)
    return text


def run_parts(args: argparse.Namespace, grid: tuple[int, int, int]) -> dict:
    from model import LinearDiTConfig, kernels

    bench = train_step.Bench(_bench_args(args)) if {"step", "profile"} & set(args.parts) else None
    use_gpu = torch.cuda.is_available() and not args.cpu
    device = bench.device if bench else torch.device("cuda" if use_gpu else "cpu")
    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "args": {key: str(value) for key, value in vars(args).items()},
        "part_seconds": {},
    }
    probe = torch.empty(1, 1, 1, 2, device=device, requires_grad=True)
    parts = {
        "checks": lambda: checks(device, args.toy),
        "attention": lambda: attention(args, LinearDiTConfig.from_preset(args.preset), grid, device),
        "step": lambda: _run_variants(bench, args),
        "profile": lambda: _profile_fastest(bench, results, args),
    }
    for name, part in parts.items():
        if name not in args.parts:
            continue
        if name == "checks" and not kernels.use_fused(probe, probe, probe, backward=True):
            results["checks_skipped"] = "the Triton kernels do not run here (CPU without TRITON_INTERPRET=1)"
            continue
        start = time.perf_counter()
        try:
            results["profiled_variant" if name == "profile" else name] = part()
        except Exception:  # one part failing (say, a kernel that does not compile here) leaves the others
            results.setdefault("errors", {})[name] = traceback.format_exc()[-3000:]
            print(f"part {name} failed:\n{results['errors'][name]}", file=sys.stderr, flush=True)
        results["part_seconds"][name] = time.perf_counter() - start
        _write(results, args.out)
    return results


def main() -> None:
    args = _parser().parse_args()
    args.started = time.monotonic()
    if args.toy:
        args.preset = "tiny"
    grid = _token_grid(args)
    if args.toy:
        args.chunk_sizes = [1, grid[0] - 1]  # an uneven first chunk, as the 2B default 1 10 10
    torch._dynamo.config.cache_size_limit = 64  # one graph per variant's block mode
    args.out.mkdir(parents=True, exist_ok=True)
    results = run_parts(args, grid)
    print(_write(results, args.out), flush=True)
    failed = [row for row in results.get("checks", []) if not row["pass"]]
    sys.exit(1 if failed or "errors" in results else 0)


if __name__ == "__main__":
    main()
