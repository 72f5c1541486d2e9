"""`svp train`: run a pipeline's stages on Ray Train + DeepSpeed (`svp generate` is in generate_cmd)."""

from __future__ import annotations

from pathlib import Path

import typer

from orchestration.commands.options import (
    ADDRESS_HELP,
    VERBOSE_OPT,
    config_overrides,
    name_value_pairs,
    set_help,
)

LOG_EVERY_OPT = typer.Option(
    None,
    min=1,
    help="Steps between reads of the step's numbers (MLflow, progress bar); default 1 on CPUs, 10 on GPUs.",
)


def register(app: typer.Typer) -> None:
    app.command("train")(train)


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
    set_: list[str] = typer.Option(
        None, "--set", help=set_help("training pipeline", "stages.video.optimizer.lr=3e-3")
    ),
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
    from orchestration.console import ray_init_options, ray_log_dir, stage_summary
    from orchestration.ray_connect import ray_connection
    from training.config import load_pipeline_or_preset
    from training.driver.pipeline import check_pipeline, run_pipeline

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
        typer.echo(stage_summary(result))
