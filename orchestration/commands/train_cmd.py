"""`svp train` (run a pipeline's stages on Ray Train + DeepSpeed) and `svp generate` (video from an export)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from orchestration.commands.options import (
    ADDRESS_HELP,
    SET_HELP,
    VERBOSE_OPT,
    config_overrides,
    name_value_pairs,
)

# Options of `svp generate` whose help is long (module level keeps the command's signature short).
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
    "capability 8.9+: L4, H100; needs the fp8 extra); fp8-scaled-mm: the hand-written float8 path.",
)
COMPILE_OPT = typer.Option(
    True,
    "--compile/--no-compile",
    help="On CUDA, run every block torch.compile'd (first call slower).",
)


LOG_EVERY_OPT = typer.Option(
    None,
    min=1,
    help="Steps between reads of the step's numbers (MLflow, progress bar); default 1 on CPUs, 10 on GPUs.",
)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("generate")(generate)


def train(
    pipeline: str = typer.Argument(..., help="Pipeline YAML, or a bundled preset name (tiny, sana-video)."),
    stage: list[str] = typer.Option(None, "--stage", help="Run only this stage (repeatable)."),
    workers: int = typer.Option(1, help="Ray Train workers (one per GPU on GPU machines)."),
    gpus_per_worker: float = typer.Option(0.0, help="GPUs per worker; 0 trains on CPUs with gloo."),
    address: str = typer.Option(
        None,
        help=ADDRESS_HELP,
    ),
    work_dir: Path = typer.Option(
        None,
        help="Checkpoints, exports, MLflow store (default: the YAML's work_dir, else ./svp-work).",
    ),
    var: list[str] = typer.Option(None, "--var", help="Set a ${NAME} variable of the YAML: NAME=VALUE."),
    set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
    max_failures: int = typer.Option(3, help="Ray retries of a stage after worker failures."),
    force: bool = typer.Option(
        False, "--force", help="Retrain the picked stages even when their export is current."
    ),
    from_stage: str = typer.Option(
        None, "--from", help="Retrain this stage and every later one, whatever their fingerprints say."
    ),
    log_every: int = LOG_EVERY_OPT,
    verbose: bool = VERBOSE_OPT,
) -> None:
    """Train the pipeline's stages in order; rerun the same command to resume after any failure."""
    from orchestration.console import setup_logging

    setup_logging(verbose)  # before anything imports Ray
    from orchestration.console import ray_init_options, ray_log_dir
    from orchestration.ray_connect import ray_connection
    from training.config import load_pipeline_or_preset
    from training.pipeline import check_pipeline, run_pipeline

    config = load_pipeline_or_preset(
        pipeline, variables=name_value_pairs(var, "--var"), overrides=config_overrides(set_)
    )
    check_pipeline(config, stage or None, workers, work_dir)  # before Ray starts
    with ray_connection(address, **ray_init_options(verbose)):
        if ray_log_dir() is not None:  # a local Ray, or the driver's node of a cluster
            typer.echo(f"Ray workers' logs: {ray_log_dir()}")
        results = run_pipeline(
            config,
            stages=stage or None,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            work_dir=work_dir,
            max_failures=max_failures,
            force=force,
            force_from=from_stage,
            log_every=log_every,
        )
    for result in results:  # the reason: why a stage was skipped, or why it had to train
        if result.skipped:
            typer.echo(f"{result.stage}: already exported to {result.export_dir} ({result.reason})")
        else:
            typer.echo(f"{result.stage}: trained ({result.reason}) and exported to {result.export_dir}")


def generate(
    checkpoint: Path = typer.Argument(..., help="A stage export folder (…/<pipeline>/<stage>/export)."),
    prompt: str = typer.Option(..., help="What the video shows."),
    seconds: float = typer.Option(
        ...,
        help="Length of the video in seconds (at the stage's frame rate); with --continue, of the new part.",
    ),
    out: Path = typer.Option(..., help="The mp4 to write."),
    block_frames: int = typer.Option(
        None, help="Latent frames per block: block-autoregressive with a constant-memory cache."
    ),
    steps: int = typer.Option(20, help="Sampler steps (per block when block-autoregressive)."),
    guidance_scale: float = typer.Option(6.0, help="Classifier-free guidance scale (<= 1 disables it)."),
    seed: int = typer.Option(0, help="Noise seed."),
    height: int = typer.Option(None, help="Pixel height (default: the stage's first bucket)."),
    width: int = typer.Option(None, help="Pixel width (default: the stage's first bucket)."),
    ema: bool = typer.Option(False, help="Use the EMA weights of the export."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, …"),
    image: Path = typer.Option(
        None, help="Image-to-video: the video starts from this image (resized to the video size)."
    ),
    continue_from: Path = CONTINUE_OPT,
    numerics: str = NUMERICS_OPT,
    precision: str = PRECISION_OPT,
    compile: bool = COMPILE_OPT,
) -> None:
    """Generate a video from a trained stage's export."""
    from training.generation import generate_from_export

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
        device=device,
        numerics=numerics,
        image=image,
        continue_from=continue_from,
        precision=precision,
        compile=compile,
    )
    record = json.loads(path.with_suffix(".json").read_text())
    typer.echo(record["inference"])
    typer.echo(f"wrote {path}")
