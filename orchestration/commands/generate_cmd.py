"""`svp generate`: a video from a stage export, on the GPU when there is one."""

from __future__ import annotations

import json
from pathlib import Path

import typer

# Options whose help is long (module level keeps the command's signature short).
SECONDS_OPT = typer.Option(
    ..., help="Length of the video in seconds (at the stage's frame rate); with --continue, of the new part."
)
BLOCK_FRAMES_OPT = typer.Option(
    None, help="Latent frames per block: block-autoregressive with a constant-memory cache."
)
IMAGE_OPT = typer.Option(
    None, help="Image-to-video: the video starts from this image (resized to the video size)."
)
CONTINUE_OPT = typer.Option(
    None,
    "--continue",
    help="Continue this mp4: its blocks are folded into the cache, then --seconds more are generated "
    "(needs --block-frames; the output is the clip followed by the new frames).",
)
NUMERICS_OPT = typer.Option(
    "diffusers",
    help="diffusers: schedule, timesteps and guidance as diffusers' SanaVideoPipeline (guidance <= 1 is "
    "none); official: the SANA-Video code's sampler.",
)
PRECISION_OPT = typer.Option(
    "native",
    help="native: the weights' dtype; fp8: torchao float8 matmuls for the large layers (GPUs of compute "
    "capability 8.9+: L4, H100; needs the fp8 extra).",
)
COMPILE_OPT = typer.Option(
    True,
    "--compile/--no-compile",
    help="On CUDA, run every block torch.compile'd (first call slower).",
)
KERNELS_OPT = typer.Option(
    True,
    "--kernels/--no-kernels",
    help="On CUDA, the fused Triton linear-attention kernel; --no-kernels takes the PyTorch path.",
)
DEVICE_OPT = typer.Option(None, help="cpu, cuda, cuda:1, … (default: cuda when a GPU is present, else cpu).")
DTYPE_OPT = typer.Option(
    None, help="Weights' dtype: fp32, bf16 or fp16 (default: bf16 on CUDA, fp32 on the CPU)."
)
MOTION_SCORE_OPT = typer.Option(
    None,
    help="Motion score appended to the prompt (' motion score: N.') as the stage's training captions had it "
    "(default: the median of its training clips, from the export).",
)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)


def generate(
    checkpoint: Path = typer.Argument(..., help="A stage export folder (…/<pipeline>/<stage>/export)."),
    prompt: str = typer.Option(..., help="What the video shows."),
    seconds: float = SECONDS_OPT,
    out: Path = typer.Option(..., help="The mp4 to write."),
    block_frames: int = BLOCK_FRAMES_OPT,
    steps: int = typer.Option(20, help="Sampler steps (per block when block-autoregressive)."),
    guidance_scale: float = typer.Option(6.0, help="Classifier-free guidance scale (<= 1 disables it)."),
    seed: int = typer.Option(0, help="Noise seed."),
    height: int = typer.Option(None, help="Pixel height (default: the stage's first bucket)."),
    width: int = typer.Option(None, help="Pixel width (default: the stage's first bucket)."),
    ema: bool = typer.Option(False, help="Use the EMA weights of the export."),
    device: str = DEVICE_OPT,
    dtype: str = DTYPE_OPT,
    image: Path = IMAGE_OPT,
    continue_from: Path = CONTINUE_OPT,
    motion_score: int = MOTION_SCORE_OPT,
    numerics: str = NUMERICS_OPT,
    precision: str = PRECISION_OPT,
    compile: bool = COMPILE_OPT,
    kernels: bool = KERNELS_OPT,
) -> None:
    """Generate a video from a trained stage's export."""
    import torch

    from training.inference.generation import Inference, generate_from_export

    inference = Inference.resolve(
        device, dtype, torch.cuda.is_available(), precision=precision, compile=compile, kernels=kernels
    )
    path = generate_from_export(
        checkpoint,
        prompt,
        seconds,
        out,
        block_frames=block_frames,
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
        height=height,
        width=width,
        ema=ema,
        inference=inference,
        numerics=numerics,
        image=image,
        continue_from=continue_from,
        motion_score=motion_score,
    )
    record = json.loads(path.with_suffix(".json").read_text())
    typer.echo(f"{record['inference']}; {record['device']}, {record['dtype']}")
    if record["model_prompt"] != prompt:
        typer.echo(
            f"prompt as the stage's captions: {record['model_prompt']!r} ({record['motion_score_from']})"
        )
    typer.echo(f"wrote {path} in {record['wall_s']:.1f} s")
