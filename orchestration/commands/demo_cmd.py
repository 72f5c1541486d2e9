"""`svp demo`: synthetic videos → curation → four tiny training stages → a long generated video."""

from __future__ import annotations

from pathlib import Path

import typer

from orchestration.commands.options import ADDRESS_HELP


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Argument(Path("svp-demo"), help="Folder for everything the demo writes."),
        videos: int = typer.Option(6, help="Synthetic videos to curate (broken files are added)."),
        workers: int = typer.Option(2, help="Ray Train workers per stage (CPU, gloo)."),
        steps: int = typer.Option(None, help="Training steps per stage (default: the demo's, see README)."),
        seconds: float = typer.Option(4.0, help="Length of the generated video."),
        address: str = typer.Option(
            None,
            help=ADDRESS_HELP,
        ),
        verbose: bool = typer.Option(False, "--verbose", help="Log every library's messages at INFO."),
    ) -> None:
        """Run the whole platform on this machine in a few minutes, with no weights; rerun to resume."""
        from orchestration.console import setup_logging
        from orchestration.demo import run_demo

        setup_logging(verbose)
        result = run_demo(out, videos=videos, workers=workers, steps=steps, seconds=seconds, address=address)
        _print_summary(result)


def _print_summary(result) -> None:
    """What the demo made, and the figures that show the model learned, as two tables."""
    from rich.console import Console
    from rich.table import Table

    counts = result.report.get("clips", {})
    figures = result.figures
    made = Table(title="svp demo", show_header=False, title_justify="left")
    made.add_column(style="bold")
    made.add_column(overflow="fold")
    made.add_row(
        "curated", f"{result.curated}  ({counts.get('kept', 0)} of {counts.get('total', 0)} clips kept)"
    )
    made.add_row("trained", str(result.work_dir))
    made.add_row("mlflow", f"mlflow ui --backend-store-uri sqlite:///{result.work_dir.resolve()}/mlflow.db")
    made.add_row("video", str(result.video))
    made.add_row("frames", f"{figures['frames_png']}  (top: generated, bottom: a training clip)")
    samples = result.samples
    made.add_row("image→video", f"{samples['image_to_video']}  (from {samples['start_image']})")
    made.add_row("continued", f"{samples['continued']}  (the video, then 1 s more)")
    made.add_row("look", f"svp dashboard --curation {result.curated} --runs {result.work_dir}")
    learned = Table(title="did it learn? (0-255 levels)", title_justify="left")
    for name in ("", "generated", "training clips"):
        learned.add_column(name, justify="right" if name else "left")
    gen, train = figures["generated"], figures["training"]
    for key, label in (
        ("frame_diff", "frame-to-frame change"),
        ("mean", "mean level"),
        ("std", "contrast (std)"),
    ):
        learned.add_row(label, f"{gen[key]:.1f}", f"{train[key]:.1f}")
    loss = Table(title="training loss (median of 10 steps)", title_justify="left")
    for name in ("stage", "first 10 steps", "last 10 steps"):
        loss.add_column(name, justify="right" if name != "stage" else "left")
    for stage, (first, last) in figures["loss"].items():
        loss.add_row(stage, f"{first:.3f}", f"{last:.3f}")
    console = Console(width=max(100, Console().width))
    for table in (made, learned, loss):
        console.print(table)
