"""`svp train` (run a pipeline's stages on Ray Train + DeepSpeed) and `svp generate` (video from an export)."""

from __future__ import annotations

from pathlib import Path

import typer


def _variables(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--var expects NAME=VALUE, got {pair!r}")
        values[name] = value
    return values


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        pipeline: str = typer.Argument(
            ..., help="Pipeline YAML, or a bundled preset name (tiny, sana-video)."
        ),
        stage: list[str] = typer.Option(None, "--stage", help="Run only this stage (repeatable)."),
        workers: int = typer.Option(1, help="Ray Train workers (one per GPU on GPU machines)."),
        gpus_per_worker: float = typer.Option(0.0, help="GPUs per worker; 0 trains on CPUs with gloo."),
        address: str = typer.Option(None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)."),
        work_dir: Path = typer.Option(
            None, help="Checkpoints, exports, MLflow store (default: the YAML's work_dir)."
        ),
        var: list[str] = typer.Option(None, "--var", help="Set a ${NAME} variable of the YAML: NAME=VALUE."),
        max_failures: int = typer.Option(3, help="Ray retries of a stage after worker failures."),
    ) -> None:
        """Train the pipeline's stages in order; rerun the same command to resume after any failure."""
        from orchestration.console import setup_logging

        setup_logging()  # before anything imports Ray
        from training.config import PRESET_NAMES, load_pipeline, load_preset
        from training.pipeline import run_pipeline

        variables = _variables(var or [])
        if not Path(pipeline).exists() and pipeline in PRESET_NAMES:
            config = load_preset(pipeline, variables=variables)
        else:
            config = load_pipeline(pipeline, variables=variables)
        results = run_pipeline(
            config,
            stages=stage or None,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            address=address,
            work_dir=work_dir,
            max_failures=max_failures,
        )
        for result in results:
            status = "already exported" if result.skipped else "exported"
            typer.echo(f"{result.stage}: {status} to {result.export_dir}")
        from orchestration.console import ray_log_dir

        if ray_log_dir() is not None:
            typer.echo(f"Ray workers' logs: {ray_log_dir()}")

    @app.command("generate")
    def generate(
        checkpoint: Path = typer.Argument(..., help="A stage export folder (…/<pipeline>/<stage>/export)."),
        prompt: str = typer.Option(..., help="What the video shows."),
        seconds: float = typer.Option(
            ..., help="Length of the video in seconds (at the stage's frame rate)."
        ),
        out: Path = typer.Option(..., help="The mp4 to write."),
        block_frames: int = typer.Option(
            None, help="Latent frames per block: block-autoregressive with a constant-memory cache."
        ),
        steps: int = typer.Option(20, help="Sampler steps (per block when block-autoregressive)."),
        guidance_scale: float = typer.Option(6.0, help="Classifier-free guidance scale (1 disables it)."),
        seed: int = typer.Option(0, help="Noise seed."),
        height: int = typer.Option(None, help="Pixel height (default: the stage's first bucket)."),
        width: int = typer.Option(None, help="Pixel width (default: the stage's first bucket)."),
        ema: bool = typer.Option(False, help="Use the EMA weights of the export."),
        device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, …"),
    ) -> None:
        """Generate a video from a trained stage's export."""
        from training.sampling import generate_from_export

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
        )
        typer.echo(f"wrote {path}")
