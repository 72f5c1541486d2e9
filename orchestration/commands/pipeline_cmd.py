"""`svp pipeline plan|run|submit PIPELINE.yaml`: the whole platform from one file, with fingerprinted reruns."""

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

FROM_OPT = typer.Option(None, "--from", help="Rerun this step and every later one, whatever changed.")
ONLY_OPT = typer.Option(None, "--only", help="Consider only this step.")
SET_OPT = typer.Option(None, "--set", help=set_help("pipeline file", "training.stages.video.steps=100"))


def register(app: typer.Typer) -> None:
    pipeline_app = typer.Typer(
        help="Curate → filter → train from one pipeline file; reruns only what changed.", no_args_is_help=True
    )
    app.add_typer(pipeline_app, name="pipeline")
    pipeline_app.command("plan")(plan)
    pipeline_app.command("run")(run)
    pipeline_app.command("submit")(submit)


def plan(
    pipeline: Path = typer.Argument(..., help="The pipeline file."),
    from_step: str = FROM_OPT,
    only: str = ONLY_OPT,
    set_: list[str] = SET_OPT,
) -> None:
    """Print per step: skip / run / rerun and why, without running anything."""
    from orchestration.pipeline.plan import format_plan, plan_pipeline
    from orchestration.pipeline.spec import load_spec

    spec = load_spec(pipeline, config_overrides(set_))
    typer.echo(format_plan(plan_pipeline(spec, from_step=from_step, only=only)))


def run(
    pipeline: Path = typer.Argument(..., help="The pipeline file."),
    from_step: str = FROM_OPT,
    only: str = ONLY_OPT,
    workers: int = typer.Option(1, help="Ray Train workers per stage."),
    gpus_per_worker: float = typer.Option(0.0, help="GPUs per worker; 0 trains on CPUs with gloo."),
    max_failures: int = typer.Option(3, help="Ray retries of a stage after worker failures."),
    address: str = typer.Option(None, help=ADDRESS_HELP),
    settle: bool = typer.Option(
        False,
        "--settle-files",
        help="Copy the pipeline file's folder under the work dir and run from there (Ray jobs: their "
        "working directory can be removed while they run).",
    ),
    set_: list[str] = SET_OPT,
    verbose: bool = VERBOSE_OPT,
) -> None:
    """Run the steps whose fingerprint changed (the driver runs here; see `submit` for a Ray job)."""
    from orchestration.console import setup_logging

    setup_logging(verbose)  # before anything imports Ray
    from orchestration.console import ray_init_options
    from orchestration.pipeline.run import run_pipeline_file
    from orchestration.pipeline.spec import load_spec, settle_files
    from orchestration.ray_connect import ray_connection

    spec = load_spec(pipeline, config_overrides(set_))
    if settle:
        spec = settle_files(spec)
    run_pipeline_file(
        spec,
        from_step=from_step,
        only=only,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        max_failures=max_failures,
        ray=lambda: ray_connection(address, **ray_init_options(verbose)),  # only once a step runs
        echo=typer.echo,
    )


def submit(
    ctx: typer.Context,
    pipeline: Path = typer.Argument(..., help="The pipeline file."),
    address: str = typer.Option(
        None,
        help="The head's job server, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS/RAY_ADDRESS).",
    ),
    from_step: str = FROM_OPT,
    only: str = ONLY_OPT,
    workers: int = typer.Option(1, help="Ray Train workers per stage."),
    gpus_per_worker: float = typer.Option(0.0, help="GPUs per worker."),
    env: list[str] = typer.Option(None, "--env", help="Environment variable of the job: NAME=VALUE."),
    ship_code: bool = typer.Option(
        False, "--ship-code/--no-ship-code", help="Carry this svp's code to the cluster (py_modules)."
    ),
    job_id: str = typer.Option(None, help="Submission id (default: chosen by Ray)."),
    set_: list[str] = SET_OPT,
) -> None:
    """Submit `svp pipeline run` as a Ray job; prints the job id and returns."""
    from orchestration.pipeline.jobs import submit as submit_job
    from orchestration.pipeline.plan import check_step
    from orchestration.pipeline.spec import load_spec, training_pipeline

    spec = load_spec(pipeline, config_overrides(set_))  # checked here, applied again by the job
    names = spec.step_names(training_pipeline(spec).stage_names)
    check_step(from_step, names, "--from")
    check_step(only, names, "--only")
    args = ["--workers", str(workers), "--gpus-per-worker", str(gpus_per_worker)]
    args += ["--from", from_step] if from_step else []
    args += ["--only", only] if only else []
    args += [arg for pair in set_ or [] for arg in ("--set", pair)]
    job = submit_job(
        spec,
        address,
        run_args=args,
        env=name_value_pairs(env, "--env"),
        ship_code=ship_code,
        job_id=job_id,
        debug=bool(ctx.find_root().params.get("debug")),  # `svp --debug pipeline submit`
    )
    typer.echo(job)
