"""Throughput of one training step of the Linear DiT: samples/s, tokens/s and MFU, for a preset and resolution.

    python -m benchmarks.train_step --preset sana-video-2b-480p --frames 81 --height 480 --width 832

One process, one device, DeepSpeed with the same engine config as `svp train` (ZeRO-2, bf16 on GPU,
activation checkpointing by default), and the loop's own step (`training.worker.step`: noise, flow-matching loss,
backward, optimizer step). Latents and text embeddings are random tensors of the real shapes, so the numbers
are the DiT's alone (as with precomputed latents); the VAE and text encoder are not timed.

MFU counts model FLOPs only (3 × `model.info.forward_flops`; the recompute of activation checkpointing is
extra work that is not counted) against the device's dense peak (`training.tracking.metrics.peak_flops`,
`SVP_PEAK_TFLOPS` overrides). Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys

import torch

from benchmarks.common import parser as common_parser
from benchmarks.common import stopwatch


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
            "chunk_sizes": args.chunk_sizes,
            "chunk_sigma_strategy": "incremental" if args.chunk_sizes else "uniform",
            "autoencoder": {"name": "unused"},
            "text_encoder": {"name": "unused", "max_length": args.text_len},
            "model": {"preset": args.preset},
            "optimizer": {"lr": 5e-5, "grad_clip": 0.1, "fused": args.fused_adamw},
            "steps": args.steps,
            "checkpoint": {"every": 10**9},
            "deepspeed": {
                "zero_stage": args.zero_stage,
                "bf16": args.bf16,
                "activation_checkpointing": args.activation_checkpointing,
                "checkpoint_fraction": args.checkpoint_fraction,
                "compile_blocks": args.compile_blocks,
                "compile_memory_budget": args.compile_memory_budget,
                "fused_attention_backward": args.fused_attention_backward,
                "float8": {
                    "enabled": args.float8 != "off",
                    "recipe": "rowwise" if args.float8 == "off" else args.float8,
                    "min_dim": args.float8_min_dim,
                },
            },
        }
    )


class Bench:
    """One process's 2B (or other preset) model inside DeepSpeed with the trainer's stage, and random
    latents/text of the benchmark's shapes fed straight to the step (precomputed-latent equivalent)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from model import LinearDiT
        from model.info import latent_shape
        from training.worker.step import build_engine, step_flops_and_tokens

        self.use_gpu = torch.cuda.is_available() and not args.cpu
        if not self.use_gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        for key, value in {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
        }.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        self.device = torch.device("cuda", 0) if self.use_gpu else torch.device("cpu")
        if self.use_gpu:
            torch.cuda.set_device(self.device)
            # In a bf16 run the only fp32 matmuls are the linear-attention state contractions (bf16-derived
            # operands); TF32 rounds their inputs to 10 mantissa bits, finer than the bf16 activations' 7.
            torch.backends.cuda.matmul.allow_tf32 = args.tf32
        self.stage = _stage(args)
        config = self.stage.model_config()
        self.bf16 = self.stage.deepspeed.bf16_enabled(self.use_gpu)
        self.dtype = torch.bfloat16 if self.bf16 else torch.float32
        torch.manual_seed(0)
        with torch.device(self.device):
            model = LinearDiT(config)
        self.engine = build_engine(self.stage, model, world_size=1, use_gpu=self.use_gpu, universal=False)
        self.shape = (args.batch, *latent_shape(config, args.frames, args.height, args.width))
        self.generator = torch.Generator().manual_seed(0)
        self.latents = torch.randn(self.shape, generator=self.generator).to(self.device)
        text = torch.randn(args.batch, args.text_len, config.caption_channels, generator=self.generator)
        self.text = text.to(self.device, self.dtype)
        self.mask = torch.ones(args.batch, args.text_len, dtype=torch.long, device=self.device)
        self.flops, self.tokens = step_flops_and_tokens(config, self.shape, args.text_len)

    def step(self, latents: torch.Tensor | None = None) -> torch.Tensor:
        """The trainer's step: noise, flow-matching loss (block-causal with the stage's chunks), backward,
        optimizer step; on `latents` when given (a data stream), else the fixed random batch."""
        from training.worker.step import forward_loss, noise_latents

        latents = self.latents if latents is None else latents
        noisy, timesteps, noise, weights = noise_latents(self.stage, latents, self.generator, self.dtype)
        loss = forward_loss(
            self.engine, self.stage, latents, noisy, self.text, self.mask, timesteps, noise, weights
        )
        self.engine.backward(loss)
        self.engine.step()
        return loss

    def time_steps(self, warmup: int, steps: int) -> tuple[list[float], float, float]:
        """Seconds of each timed step (after `warmup` untimed ones), of the first step (compile included)
        and the last loss."""
        times, first_step_s = [], 0.0
        for index in range(warmup + steps):
            elapsed = stopwatch(self.device)
            loss = self.step()
            seconds = elapsed()
            if index == 0:
                first_step_s = seconds  # includes torch.compile when on
            if index >= warmup:
                times.append(seconds)
        return times, first_step_s, float(loss.detach())

    def figures(self, times: list[float]) -> dict[str, object]:
        from training.tracking.metrics import peak_flops

        step_s = statistics.median(times)
        peak = peak_flops(self.device, self.bf16)
        return {
            "step_s_median": step_s,
            "step_s_min": min(times),
            "samples_per_s": self.shape[0] / step_s,
            "tokens_per_s": self.tokens / step_s,
            "model_tflops_per_step": self.flops / 1e12,
            "achieved_tflops": self.flops / step_s / 1e12,
            "mfu": self.flops / step_s / peak if peak else None,
            "peak_tflops": peak / 1e12 if peak else None,
            "max_memory_gib": torch.cuda.max_memory_allocated(self.device) / 2**30 if self.use_gpu else None,
        }

    def profile(self, rows: int) -> str:
        """One more step under torch.profiler: the top ops by device (or CPU) time, as a table."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.use_gpu else [])
        with profile(activities=activities) as prof:
            self.step()
            if self.use_gpu:
                torch.cuda.synchronize()
        sort = "self_cuda_time_total" if self.use_gpu else "self_cpu_time_total"
        return prof.key_averages().table(sort_by=sort, row_limit=rows)


def run(args: argparse.Namespace) -> dict[str, object]:
    bench = Bench(args)
    times, first_step_s, loss = bench.time_steps(args.warmup, args.steps)
    if args.profile:
        print(bench.profile(args.profile), file=sys.stderr)
    return {
        "preset": args.preset,
        "frames": args.frames,
        "height": args.height,
        "width": args.width,
        "batch": args.batch,
        "latent": list(bench.shape[1:]),
        "tokens_per_sample": bench.tokens / args.batch,
        "chunk_sizes": args.chunk_sizes,
        "zero_stage": args.zero_stage,
        "bf16": bench.bf16,
        "activation_checkpointing": args.activation_checkpointing,
        "checkpoint_fraction": args.checkpoint_fraction,
        "compile_blocks": args.compile_blocks,
        "compile_memory_budget": args.compile_memory_budget,
        "fused_attention_backward": args.fused_attention_backward,
        "float8": args.float8,
        "fused_adamw": bench.stage.optimizer.fused_enabled(bench.use_gpu),
        "tf32": args.tf32,
        "first_step_s": first_step_s,
        "device": torch.cuda.get_device_name(bench.device) if bench.use_gpu else "cpu",
        **bench.figures(times),
        "loss": loss,
        "compiled_graphs": _compiled_graphs(),
    }


def _compiled_graphs() -> int:
    """Distinct graphs torch.compile built in this process (one per block shape/mode when blocks share one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def parser() -> argparse.ArgumentParser:
    parser = common_parser(__doc__, preset="sana-video-2b-480p", shape=(81, 480, 832), warmup=3, steps=10)
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
    parser.add_argument("--cpu", action="store_true", help="Run on the CPU even when a GPU is present.")
    parser.add_argument(
        "--profile", type=int, default=0, help="Profile one more step; print this many top ops."
    )
    parser.add_argument(
        "--chunk-sizes",
        type=int,
        nargs="+",
        default=None,
        help="Block-causal step: latent frames per chunk (per-chunk sigmas, incremental), e.g. 1 10 10.",
    )
    parser.add_argument(
        "--no-fused-attention-backward",
        dest="fused_attention_backward",
        action="store_false",
        help="Train through the PyTorch linear-attention path instead of the fused Triton kernels.",
    )
    parser.add_argument(
        "--fused-adamw",
        default="auto",
        type=lambda v: v if v == "auto" else v.lower() == "true",
        help="torch's fused AdamW: auto (on GPU), true or false.",
    )
    parser.add_argument(
        "--float8",
        default="off",
        choices=["off", "rowwise", "tensorwise"],
        help="Float8 training through torchao (the stage's deepspeed.float8 recipe).",
    )
    parser.add_argument(
        "--float8-min-dim", type=int, default=256, help="GEMMs with a smaller dimension stay in bf16."
    )
    return parser


def main() -> None:
    print(json.dumps(run(parser().parse_args())), flush=True)


if __name__ == "__main__":
    main()
