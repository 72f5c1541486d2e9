"""`svp encode` throughput and the training step with and without precomputed latents.

    # one H200 (2B preset, Wan2.1 VAE of the real size with random weights, 480p, 81 frames):
    python -m benchmarks.encode --preset sana-video-2b-480p --vae wan2.1 --height 480 --width 832 --frames 81
    # CPU (tiny model, tiny Wan VAE):
    python -m benchmarks.encode --preset tiny --vae tiny-wan --height 64 --width 64 --frames 9 --clips 8

1. Writes `--clips` real H.264 clips into shards (the tests' shard fixture) and a random-weight VAE through
   diffusers' `save_pretrained`, loaded back by the trainer's own loader (`model.autoencoders`).
2. Runs `svp encode`'s job (`training.encode.encode_job.run_encode`) on a private local Ray (one actor, the GPU when
   there is one): clips/s over the whole job, actor start included, Ray start excluded.
3. Times the trainer's own step (`training.worker.step.guarded_step` inside DeepSpeed, one process) on the stage's
   batches (`training.data.stage_data.StageData`): once encoding each batch in the step (latents: off), once reading
   the precomputed latents (latents: required). Median of `--steps` steps after `--warmup`.

The text encoder is the hashed one at Gemma-2-2B's width (2304 channels, 300 tokens): Gemma-2-2B costs 0.026 s
per prompt on an H200 (issue 12), small beside the VAE. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import parser as common_parser
from benchmarks.common import stopwatch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shard fixture


def _vae(folder: Path, kind: str) -> Path:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    if kind == "wan2.1":
        vae = AutoencoderKLWan()  # diffusers' defaults are the Wan2.1 VAE config
    else:
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        )
    vae.save_pretrained(folder)
    return folder


def _stage(args: argparse.Namespace, data: Path, vae: Path, latents: str):
    from pydantic import TypeAdapter

    from training.config import StageConfig

    z_dim = 16 if args.vae == "wan2.1" else 4
    return TypeAdapter(StageConfig).validate_python(
        {
            "name": "benchmark",
            "data": [str(data)],
            "kind": "video",
            "target_fps": args.fps,
            "buckets": [
                {"height": args.height, "width": args.width, "num_frames": args.frames, "batch_size": 1}
            ],
            "autoencoder": {"name": "wan2.1", "path": str(vae)},
            "text_encoder": {
                "name": "hashed",
                "max_length": args.text_len,
                "options": {"channels": args.text_channels},
            },
            "model": {
                "preset": args.preset,
                "overrides": {
                    "in_channels": z_dim,
                    "out_channels": z_dim,
                    "vae_stride": [4, 8, 8],
                    "caption_channels": args.text_channels,
                },
            },
            "optimizer": {"lr": 1e-4},
            "steps": 10**6,
            "checkpoint": {"every": 10**6},
            "deepspeed": {"activation_checkpointing": args.activation_checkpointing},
            "num_workers": 2,
            "latents": latents,
        }
    )


def _encode(stage) -> dict[str, float]:
    import ray

    from training.encode.encode_job import run_encode

    ray.init(address="local", include_dashboard=False, num_gpus=torch.cuda.device_count())
    try:
        start = time.perf_counter()
        (result,) = run_encode([stage], batch_size=1)
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return {
        "encode_job_s": seconds,
        "encoded_clips": result.encoded,
        "encode_job_clips_per_s": result.encoded / seconds,
        **_actor_throughput(stage),
    }


def _actor_throughput(stage) -> dict[str, float]:
    """One encoder actor's own loop (read, decode, encode, write), warm, in this process: the steady-state
    clips/s per actor, without Ray's and the actor's start. It rewrites the same files with the same bytes."""
    from training.encode.encode_job import plan_encode
    from training.encode.encode_shard import ShardEncoder

    tasks = [task for plan in plan_encode(stage) for task in plan.tasks]
    encoder = ShardEncoder(stage.resolved(), "float32", batch_size=1)
    encoder.encode_shard(tasks[0])  # warm-up (cuDNN autotuning, first allocations)
    elapsed = stopwatch()
    clips = sum(len(encoder.encode_shard(task)["rows"]) for task in tasks)
    seconds = elapsed()
    del encoder
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"actor_clips_per_s": clips / seconds, "actor_s_per_clip": seconds / clips}


def _step_times(stage, args: argparse.Namespace) -> dict[str, float]:
    from model import LinearDiT
    from training.data.stage_data import StageData
    from training.worker.step import StageStep, build_engine, guarded_step, step_generator

    use_gpu = torch.cuda.is_available()
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    dtype = torch.bfloat16 if stage.deepspeed.bf16_enabled(use_gpu) else torch.float32
    torch.manual_seed(0)
    step_math = StageStep(stage, device, dtype)
    with torch.device(device):
        engine = build_engine(stage, LinearDiT(step_math.model_config), 1, use_gpu, universal=False)
    data = StageData(stage)
    batches = data.batches()
    times = []
    for step in range(args.warmup + args.steps):
        batch = next(batches)  # loading is the dataloader's (overlapped); the step is timed alone
        elapsed = stopwatch(device)
        guarded_step(engine, step_math, batch, step_generator(0, 0, step))
        if step >= args.warmup:
            times.append(elapsed())
    built = step_math._autoencoder is not None
    del engine, step_math, batches
    if use_gpu:
        torch.cuda.empty_cache()
    return {
        "step_s_median": statistics.median(times),
        "built_vae": built,
        "latents": data.latents is not None,
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    from shard_fixtures import make_shards

    from benchmarks.train_step import _free_port

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    with tempfile.TemporaryDirectory(prefix="svp-encode-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        data = make_shards(
            root / "data",
            num_clips=args.clips,
            sizes=((args.height, args.width),),
            frames=args.frames,
            fps=args.fps,
            clips_per_shard=max(1, args.clips // 2),
        )
        vae = _vae(root / "vae", args.vae)
        setup_s = time.perf_counter() - start
        encoded = _encode(_stage(args, data, vae, "required"))
        with_latents = _step_times(_stage(args, data, vae, "required"), args)
        without = _step_times(_stage(args, data, vae, "off"), args)
    return {
        "preset": args.preset,
        "vae": args.vae,
        "clip": [args.frames, args.height, args.width],
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "setup_s": setup_s,
        **encoded,
        "step_s_encoding_in_step": without["step_s_median"],
        "step_s_precomputed_latents": with_latents["step_s_median"],
        "vae_built_with_latents": with_latents["built_vae"],
    }


def main() -> None:
    parser = common_parser(__doc__, preset="sana-video-2b-480p", shape=(81, 480, 832), warmup=2, steps=5)
    parser.add_argument("--vae", choices=["wan2.1", "tiny-wan"], default="wan2.1")
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--text-len", type=int, default=300)
    parser.add_argument("--text-channels", type=int, default=2304)
    parser.add_argument(
        "--no-activation-checkpointing", dest="activation_checkpointing", action="store_false"
    )
    print(json.dumps(run(parser.parse_args())), flush=True)


if __name__ == "__main__":
    main()
