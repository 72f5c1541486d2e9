"""What reading the step's numbers on the host costs: steps/s of the trainer's step with the log window read
every step (`log_every` 1) and every 10 steps (the GPU default).

    python -m benchmarks.step_syncs --preset sana-video-2b-480p --frames 21 --height 256 --width 256

One process, one device, the trainer's own step (`training.worker.step.guarded_step`: weight-free space-to-depth
autoencoder and hashed text encoder, the model at the preset's width, DeepSpeed ZeRO-2, bf16 on a GPU) and its
log window (`training.tracking.metrics.StepWindow`). Every read waits for the GPU's queued work; between reads the
host queues the next steps' kernels while the GPU runs. Prints one JSON line per `log_every`.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from benchmarks.common import parser as common_parser
from benchmarks.common import stopwatch
from benchmarks.train_step import _free_port


def _stage(args: argparse.Namespace):
    from pydantic import TypeAdapter

    from training.config import StageConfig

    stride = [1, 8, 8]
    return TypeAdapter(StageConfig).validate_python(
        {
            "name": "benchmark",
            "data": ["unused"],
            "kind": "video" if args.frames > 1 else "image",
            "buckets": [
                {"height": args.height, "width": args.width, "num_frames": args.frames, "batch_size": 2}
            ],
            "autoencoder": {"name": "space_to_depth", "options": {"stride": stride}},
            "text_encoder": {"name": "hashed", "max_length": 64},
            "model": {
                "preset": args.preset,
                "overrides": {
                    "in_channels": 192,
                    "out_channels": 192,
                    "patch_size": [1, 1, 1],
                    "vae_stride": stride,
                },
            },
            "optimizer": {"lr": 1e-5, "grad_clip": 1.0},
            "steps": args.steps,
            "checkpoint": {"every": 10**9},
            "deepspeed": {"zero_stage": 2, "bf16": "auto", "activation_checkpointing": args.frames > 1},
        }
    )


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    from model import LinearDiT
    from training.data.stage_data import Batch, DataPosition
    from training.tracking.metrics import StepWindow
    from training.worker.step import StageStep, build_engine, guarded_step, step_generator

    use_gpu = torch.cuda.is_available()
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    stage = _stage(args)
    dtype = torch.bfloat16 if stage.deepspeed.bf16_enabled(use_gpu) else torch.float32
    step_math = StageStep(stage, device, dtype)
    torch.manual_seed(0)
    with torch.device(device):
        model = LinearDiT(step_math.model_config)
    engine = build_engine(stage, model, world_size=1, use_gpu=use_gpu, universal=False)
    video = torch.rand(2, 3, args.frames, args.height, args.width, generator=torch.Generator().manual_seed(0))
    captions = ["a red fox runs through fresh snow"] * 2
    batch = Batch(video, captions, ["k0", "k1"], "bench", DataPosition())
    rows = []
    for log_every in (1, 10):
        window = StepWindow(device)
        for step in range(1, args.warmup + args.steps + 1):
            if step == args.warmup + 1:
                window.read()
                elapsed = stopwatch(device)
            window.start_step()
            totals, _ = guarded_step(engine, step_math, batch, step_generator(0, 0, step))
            window.add(totals)
            if step % log_every == 0:
                window.read()
        window.read()
        seconds = elapsed()
        rows.append({"preset": args.preset, "log_every": log_every, "steps_per_s": args.steps / seconds})
    return rows


def main() -> None:
    parser = common_parser(__doc__, preset="tiny", shape=(1, 64, 64), steps=50, warmup=5)
    args = parser.parse_args()
    for row in run(args):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
