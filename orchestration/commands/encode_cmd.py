"""`svp encode`: precompute a pipeline's latents and caption embeddings for its stages (a Ray Data job)."""

from __future__ import annotations

import typer

from orchestration.commands.options import ADDRESS_HELP, name_value_pairs


def register(app: typer.Typer) -> None:
    @app.command("encode")
    def encode(
        pipeline: str = typer.Argument(
            ..., help="Pipeline YAML, or a bundled preset name (tiny, sana-video)."
        ),
        stage: list[str] = typer.Option(None, "--stage", help="Encode only this stage (repeatable)."),
        var: list[str] = typer.Option(None, "--var", help="Set a ${NAME} variable of the YAML: NAME=VALUE."),
        actors: int = typer.Option(1, min=1, help="Encoder actors (one per GPU on GPU machines)."),
        gpus_per_actor: float = typer.Option(
            None, min=0, help="GPUs per encoder actor (default: 1 when the cluster has GPUs, else 0)."
        ),
        batch_size: int = typer.Option(4, min=1, help="Clips encoded together (one bucket per batch)."),
        address: str = typer.Option(None, help=ADDRESS_HELP),
    ) -> None:
        """Encode the stages' clips once (VAE latents, caption embeddings) into companion shards next to
        the curation shards; training then reads them instead of encoding every step. Rerun to resume."""
        from orchestration.console import setup_logging

        setup_logging()  # before anything imports Ray
        from orchestration.ray_connect import ray_connection
        from training.config import load_pipeline_or_preset
        from training.encode.encode_job import plan_encode, run_encode

        config = load_pipeline_or_preset(pipeline, variables=name_value_pairs(var, "--var"))
        stages = [config.stage(name) for name in stage] if stage else list(config.stages)
        for picked in stages:
            plan_encode(picked)  # user errors before Ray starts
        with ray_connection(address):
            results = run_encode(stages, gpus_per_actor=gpus_per_actor, actors=actors, batch_size=batch_size)
        for result in results:
            failed = ", ".join(f"{reason} {n}" for reason, n in result.failed.items()) or "none"
            typer.echo(
                f"{result.stage}: {result.encoded} of {result.samples} clips encoded into {result.out_dir} "
                f"({result.shards} shards, {result.shards_done_before} done before; failed: {failed}; "
                f"{result.unfit} fit no bucket)"
            )
            for key, reason, detail in result.failures:
                typer.echo(f"  not encoded: {key}: {reason}: {detail}")
