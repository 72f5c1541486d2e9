"""`svp demo`: synthetic videos → curation → four tiny training stages → a long generated video."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Argument(Path("svp-demo"), help="Folder for everything the demo writes."),
        videos: int = typer.Option(6, help="Synthetic videos to curate (broken files are added)."),
        workers: int = typer.Option(2, help="Ray Train workers per stage (CPU, gloo)."),
        steps: int = typer.Option(None, help="Training steps per stage (default: the tiny preset's)."),
        seconds: float = typer.Option(4.0, help="Length of the generated video."),
        address: str = typer.Option(
            None,
            help="Join a Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: a private local Ray).",
        ),
    ) -> None:
        """Run the whole platform on this machine in a few minutes, with no weights; rerun to resume."""
        import logging

        from orchestration.demo import run_demo

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        result = run_demo(out, videos=videos, workers=workers, steps=steps, seconds=seconds, address=address)
        counts = result.report.get("clips", {})
        typer.echo(
            "\n".join(
                [
                    f"curated: {result.curated}  ({counts})",
                    f"trained: {result.work_dir}  (mlflow ui --backend-store-uri "
                    f"sqlite:///{result.work_dir.resolve()}/mlflow.db)",
                    f"video:   {result.video}",
                    f"look:    svp dashboard --curation {result.curated} --runs {result.work_dir}",
                ]
            )
        )
