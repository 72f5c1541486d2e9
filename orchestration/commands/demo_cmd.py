"""`svp demo`: synthetic videos → curation → four tiny training stages → a long generated video."""

from __future__ import annotations

from pathlib import Path

import typer

from orchestration.commands.options import ADDRESS_HELP

# The summary's rows: (figure, label, factor), and how far each video's background is from the clips'. `flicker`
# and `motion` are the evaluation's metrics (training.inference.evaluation), the others orchestration.demo_check's.
STATISTICS = (
    ("flicker", "flicker: frame-to-frame change", 1.0),
    ("motion", "motion (% of the diagonal per s)", 1.0),
    ("mean", "mean level", 1.0),
    ("std", "contrast (std)", 1.0),
    ("shape", "shape (% of pixels off background)", 100.0),
)
FOLLOWS = (
    ("same_caption", "background vs its caption's clips"),
    ("other_captions", "background vs other captions' clips"),
)


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
    made.add_row(
        "frames",
        f"{figures['frames_png']}  (generated from the prompt; from the clip's first frame; the clip)",
    )
    samples = result.samples
    made.add_row("clip", f"{result.clip}  (a training clip; the prompt is its caption)")
    made.add_row(
        "image→video", f"{samples['image_to_video']}  (from its first frame, {samples['start_image']})"
    )
    made.add_row("continued", f"{samples['continued']}  (the clip, then as long again)")
    made.add_row("look", f"svp dashboard --curation {result.curated} --runs {result.work_dir}")
    learned = Table(title=f"did it learn? (0-255 levels; prompt {figures['prompt']!r})", title_justify="left")
    for name in ("", "from the prompt", "from a first frame", "training clips"):
        learned.add_column(name, justify="right" if name else "left")
    videos, train = figures["videos"], figures["training"]
    for key, label, unit in STATISTICS:
        cells = [stats[key] for stats in (videos["generated"], videos["image_to_video"], train)]
        learned.add_row(label, *(f"{value * unit:.1f}" for value in cells))
    for key, label in FOLLOWS:
        cells = [figures["follows"][name][key] for name in ("generated", "image_to_video")]
        learned.add_row(label, *("-" if value is None else f"{value:.1f}" for value in cells), "")
    loss = Table(title="training loss (median of 10 steps)", title_justify="left")
    for name in ("stage", "first 10 steps", "last 10 steps"):
        loss.add_column(name, justify="right" if name != "stage" else "left")
    for stage, (first, last) in figures["loss"].items():
        loss.add_row(stage, f"{first:.3f}", f"{last:.3f}")
    console = Console(width=max(100, Console().width))
    for table in (made, learned, _eval_table(figures["eval"]), loss):
        console.print(table)


def _eval_table(evaluation: dict):
    """The means the demo's videos scored (`svp eval`'s metrics), as logged to the last stage's run."""
    from rich.table import Table

    run = evaluation["run_id"] or "no run"
    title = f"eval of the demo's videos (eval/* of run {run[:8]} at step {evaluation['step']})"
    table = Table(title=title, title_justify="left", show_header=False)
    for name, value in evaluation["metrics"].items():
        table.add_row(name, f"{value:.3f}")
    table.add_row("videos, eval.json", evaluation["out"])
    return table
