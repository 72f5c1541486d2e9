"""Time the Linear DiT: a training step (forward + backward) and block-AR inference, with MFU.

    python benchmarks/linear_dit_step.py --preset sana-video-2b-480p --frames 81 --height 480 --width 832

On a GPU it runs bf16 weights with fp32 attention state; on a CPU fp32. Prints one JSON line per measurement
(`--out FILE` also appends them there). MFU = 3 · forward FLOPs per second / `--peak-tflops`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import parser as common_parser
from benchmarks.common import stopwatch
from model import LinearDiT, LinearDiTConfig
from model.info import count_parameters, forward_flops, latent_shape
from model.samplers import autoregressive_segments


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocator, kernels)
    elapsed = stopwatch(device)
    for _ in range(repeats):
        fn()
    return elapsed() / repeats


def _parse_args() -> argparse.Namespace:
    parser = common_parser(__doc__, preset="sana-video-2b-480p", shape=(81, 480, 832), out=True)
    parser.add_argument("--text-len", type=int, default=300)
    parser.add_argument("--chunk-frames", type=int, default=10, help="latent frames per block-AR block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    return parser.parse_args()


def main() -> None:
    args = _parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = LinearDiTConfig.from_preset(args.preset, gradient_checkpointing=True)
    shape = latent_shape(config, args.frames, args.height, args.width)
    model = LinearDiT(config).to(device=device, dtype=dtype)
    latents = torch.randn(1, *shape, device=device, dtype=dtype)
    text = torch.randn(1, args.text_len, config.caption_channels, device=device, dtype=dtype)
    timesteps = torch.rand(1, shape[1], device=device) * 1000
    flops = forward_flops(config, shape, args.text_len)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    base = {"device": name, "preset": args.preset, "params": count_parameters(config), "latent": list(shape)}
    results = []

    def train_step(chunk_sizes=None):
        model.zero_grad(set_to_none=True)
        model(latents, text, timesteps, chunk_sizes=chunk_sizes).float().square().mean().backward()

    chunks = [end - start for start, end in autoregressive_segments(shape[1], args.chunk_frames)]
    for label, chunk_sizes in (("train_step_bidirectional", None), ("train_step_block_causal", chunks)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = _timed(lambda cs=chunk_sizes: train_step(cs), device, args.repeats)
        row = {**base, "what": label, "chunks": chunk_sizes, "seconds": round(seconds, 4)}
        row["mfu"] = round(3 * flops / seconds / (args.peak_tflops * 1e12), 4)
        if device.type == "cuda":
            row["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        results.append(row)

    model.zero_grad(set_to_none=True)
    model.eval()
    block = latents[:, :, : args.chunk_frames]
    with torch.no_grad():
        cache = model.new_cache(1, latent_hw=shape[2:], device=device)
        model.update_cache(block, text, cache, 0)
        step = _timed(
            lambda: model.forward_block(block, text, 500.0, cache, cache.num_frames), device, args.repeats
        )
    results.append(
        {
            **base,
            "what": "forward_block",
            "block_frames": args.chunk_frames,
            "seconds": round(step, 4),
            "cache_bytes": cache.nbytes(),
        }
    )
    _emit(results, args.out)


def _emit(results: list[dict], out: Path | None) -> None:
    """One JSON line per result on stdout, appended to `out` too when given."""
    for row in results:
        line = json.dumps(row)
        print(line)
        if out is not None:
            with out.open("a") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main()
