"""Throughput of one training step of the Linear DiT: samples/s, tokens/s and MFU, for a preset and resolution.

    python -m benchmarks.train_step --preset sana-video-2b-480p --frames 81 --height 480 --width 832

One process, one device, DeepSpeed with the same engine config as `svp train` (ZeRO-2, bf16 on GPU,
activation checkpointing by default), and the loop's own step (`training.step`: noise, flow-matching loss,
backward, optimizer step). Latents and text embeddings are random tensors of the real shapes, so the numbers
are the DiT's alone (as with precomputed latents); the VAE and text encoder are not timed.

MFU counts model FLOPs only (3 × `model.info.forward_flops`; the recompute of activation checkpointing is
extra work that is not counted) against the device's dense peak (`training.metrics.peak_flops`,
`SVP_PEAK_TFLOPS` overrides). Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from typing import Any

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage(args: argparse.Namespace):
    """A StageConfig with the benchmark's settings, so the DeepSpeed and model configs are the trainer's."""
    from pydantic import TypeAdapter

    from training.config import StageConfig

    return TypeAdapter(StageConfig).validate_python(
        {
            "name": "benchmark",
            "data": ["unused"],
            "kind": "video" if args.frames > 1 else "image",
            "buckets": [
                {
                    "height": args.height,
                    "width": args.width,
                    "num_frames": args.frames,
                    "batch_size": args.batch,
                }
            ],
            "autoencoder": {"name": "unused"},
            "text_encoder": {"name": "unused", "max_length": args.text_len},
            "model": {"preset": args.preset},
            "optimizer": {"lr": 5e-5, "grad_clip": 0.1},
            "steps": args.steps,
            "checkpoint": {"every": 10**9},
            "deepspeed": {
                "zero_stage": args.zero_stage,
                "bf16": args.bf16,
                "activation_checkpointing": args.activation_checkpointing,
                "checkpoint_fraction": args.checkpoint_fraction,
                "compile_blocks": args.compile_blocks,
                "compile_memory_budget": args.compile_memory_budget,
            },
        }
    )


def _single_process_device(args: argparse.Namespace) -> tuple[bool, torch.device]:
    """(use_gpu, device) for a one-process DeepSpeed run: its rank variables, and TF32 as asked."""
    use_gpu = torch.cuda.is_available() and not args.cpu
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)
        # In a bf16 run the only fp32 matmuls are the linear-attention state contractions (bf16-derived
        # operands); TF32 rounds their inputs to 10 mantissa bits, finer than the bf16 activations' 7.
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    return use_gpu, device


def _timed_steps(
    args: argparse.Namespace, stage: Any, engine: Any, batch: tuple, use_gpu: bool
) -> tuple[list[float], float, torch.Tensor]:
    """Wall time of each measured step (after `args.warmup`), of the first step (torch.compile included
    when on) and the last loss."""
    from training.step import forward_loss, noise_latents

    latents, text, mask, generator, dtype = batch
    times = []
    for step in range(args.warmup + args.steps):
        if use_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        noisy, timesteps, noise, weights = noise_latents(stage, latents, generator, dtype)
        loss = forward_loss(engine, stage, latents, noisy, text, mask, timesteps, noise, weights)
        engine.backward(loss)
        engine.step()
        if use_gpu:
            torch.cuda.synchronize()
        if step == 0:
            first_step_s = time.perf_counter() - start
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return times, first_step_s, loss


def run(args: argparse.Namespace) -> dict[str, object]:
    from model import LinearDiT
    from model.info import latent_shape
    from training.metrics import peak_flops
    from training.step import build_engine, step_flops_and_tokens

    use_gpu, device = _single_process_device(args)

    stage = _stage(args)
    config = stage.model_config()
    bf16 = stage.deepspeed.bf16_enabled(use_gpu)
    dtype = torch.bfloat16 if bf16 else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LinearDiT(config)
    engine = build_engine(stage, model, world_size=1, use_gpu=use_gpu, universal=False)

    shape = (args.batch, *latent_shape(config, args.frames, args.height, args.width))
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(shape, generator=generator).to(device)
    text = torch.randn(args.batch, args.text_len, config.caption_channels, generator=generator).to(
        device, dtype
    )
    mask = torch.ones(args.batch, args.text_len, dtype=torch.long, device=device)
    flops, tokens = step_flops_and_tokens(config, shape, args.text_len)

    batch = (latents, text, mask, generator, dtype)
    times, first_step_s, loss = _timed_steps(args, stage, engine, batch, use_gpu)
    step_s = statistics.median(times)
    if args.profile:
        _profile(stage, engine, latents, text, mask, generator, dtype, args.profile)
    peak = peak_flops(device, bf16)
    return {
        "preset": args.preset,
        "frames": args.frames,
        "height": args.height,
        "width": args.width,
        "batch": args.batch,
        "latent": list(shape[1:]),
        "tokens_per_sample": tokens / args.batch,
        "zero_stage": args.zero_stage,
        "bf16": bf16,
        "activation_checkpointing": args.activation_checkpointing,
        "checkpoint_fraction": args.checkpoint_fraction,
        "compile_blocks": args.compile_blocks,
        "compile_memory_budget": args.compile_memory_budget,
        "tf32": args.tf32,
        "first_step_s": first_step_s,
        "device": torch.cuda.get_device_name(device) if use_gpu else "cpu",
        "step_s_median": step_s,
        "step_s_min": min(times),
        "samples_per_s": args.batch / step_s,
        "tokens_per_s": tokens / step_s,
        "model_tflops_per_step": flops / 1e12,
        "achieved_tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / peak if peak else None,
        "peak_tflops": peak / 1e12 if peak else None,
        "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if use_gpu else None,
        "loss": float(loss.detach()),
        "compiled_graphs": _compiled_graphs(),
    }


def _compiled_graphs() -> int:
    """Distinct graphs torch.compile built in this process (one per block shape/mode when blocks share one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _profile(stage, engine, latents, text, mask, generator, dtype, rows: int) -> None:
    """One more step under torch.profiler; the top ops by device (or CPU) time go to stderr."""
    import sys

    from torch.profiler import ProfilerActivity, profile

    from training.step import forward_loss, noise_latents

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if latents.is_cuda else [])
    with profile(activities=activities) as prof:
        noisy, timesteps, noise, weights = noise_latents(stage, latents, generator, dtype)
        engine.backward(forward_loss(engine, stage, latents, noisy, text, mask, timesteps, noise, weights))
        engine.step()
        if latents.is_cuda:
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if latents.is_cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=rows), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sana-video-2b-480p")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--text-len", type=int, default=300)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--bf16", default="auto", type=lambda v: v if v == "auto" else v.lower() == "true")
    parser.add_argument(
        "--no-activation-checkpointing", dest="activation_checkpointing", action="store_false"
    )
    parser.add_argument(
        "--checkpoint-fraction",
        type=float,
        default=1.0,
        help="Share of blocks recomputed in backward (the first ones); the rest keep their activations.",
    )
    parser.add_argument(
        "--compile-blocks", action="store_true", help="torch.compile each transformer block (GPU only)."
    )
    parser.add_argument(
        "--compile-memory-budget",
        type=float,
        default=1.0,
        help="With --compile-blocks: share of a non-checkpointed block's activations kept for backward.",
    )
    parser.add_argument(
        "--tf32", action="store_true", help="TF32 for fp32 matmuls (the linear-attention state in bf16 runs)."
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cpu", action="store_true", help="Run on the CPU even when a GPU is present.")
    parser.add_argument(
        "--profile", type=int, default=0, help="Profile one more step; print this many top ops."
    )
    print(json.dumps(run(parser.parse_args())), flush=True)


if __name__ == "__main__":
    main()
