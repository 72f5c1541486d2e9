"""`svp synth …` and `svp curate …`: make a synthetic corpus, curate a folder, re-filter, print the report."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("synth")
    def synth(
        out: Path = typer.Argument(
            ..., help="Folder to write: OUT/videos/ (inputs) and OUT/ground_truth.json."
        ),
        videos: int = typer.Option(6, "--videos", help="Number of good videos (broken files are added)."),
        seed: int = typer.Option(0, help="Random seed; the corpus is deterministic from it."),
        no_broken: bool = typer.Option(False, "--no-broken", help="Do not add the broken files."),
        scene: str = typer.Option(
            "texture",
            help="texture (smooth random textures) or shapes (a moving shape on a flat background).",
        ),
    ) -> None:
        """Write a synthetic video corpus with known cuts, motion, captions and broken files."""
        from curation.synth import VIDEOS_DIR, make_corpus

        truth = make_corpus(out, videos, seed=seed, broken=not no_broken, scene=scene)
        typer.echo(
            f"wrote {len(truth.videos)} videos and {len(truth.broken)} broken files to {out / VIDEOS_DIR}; "
            f"ground truth in {out / 'ground_truth.json'}"
        )

    curate_app = typer.Typer(
        help="Curate raw videos into scored clips and WebDataset shards (a Ray Data job).",
        invoke_without_command=True,
    )
    app.add_typer(curate_app, name="curate")

    @curate_app.callback()
    def curate(
        ctx: typer.Context,
        input: str = typer.Option(
            None, "--input", help="Folder, glob, fsspec URI (s3://, gs://) or manifest."
        ),
        output: Path = typer.Option(
            None, "--output", help="Output folder (rerun the same command to resume)."
        ),
        config: Path = typer.Option(None, "--config", help="Curation config YAML."),
        min_clip_s: float = typer.Option(None, "--min-clip-s", help="Shortest clip, seconds."),
        max_clip_s: float = typer.Option(None, "--max-clip-s", help="Longest clip, seconds."),
        thresholds: Path = typer.Option(None, "--thresholds", help="Thresholds YAML (default: built in)."),
        address: str = typer.Option(
            None, "--address", help="Ray cluster (ray://host:10001); default RAY_ADDRESS or local."
        ),
    ) -> None:
        """svp curate --input IN --output OUT [--config FILE] [--min-clip-s S] [--max-clip-s S] [--address ADDR]"""
        if ctx.invoked_subcommand is not None:
            return
        if input is None or output is None:
            raise ValueError("svp curate needs --input IN and --output OUT (or a subcommand: filter, report)")
        from curation.config import load_config
        from curation.pipeline import run_curation
        from curation.report import format_report
        from orchestration.console import setup_logging

        setup_logging()
        cfg = load_config(
            config,
            scenes__min_clip_s=min_clip_s,
            scenes__max_clip_s=max_clip_s,
            thresholds_file=str(thresholds) if thresholds else None,
        )
        report = run_curation(input, output, cfg, address=address)
        typer.echo(format_report(report))

    @curate_app.command("filter")
    def filter_(
        out: Path = typer.Argument(..., help="A curation output folder."),
        thresholds: Path = typer.Option(..., "--thresholds", help="New thresholds YAML."),
    ) -> None:
        """Re-apply thresholds to clips.parquet and rewrite shards, without decoding anything for scoring."""
        from curation.refilter import refilter
        from curation.report import format_report

        typer.echo(format_report(refilter(out, thresholds)))

    @curate_app.command("report")
    def report(
        out: Path = typer.Argument(..., help="A curation output folder."),
        as_json: bool = typer.Option(False, "--json", help="Print the raw report.json."),
    ) -> None:
        """Print the report of a curation run as a table."""
        from curation.report import format_report

        path = out / "report.json"
        if not path.is_file():
            raise FileNotFoundError(f"no report.json in {out}: run svp curate --output {out} first")
        data = json.loads(path.read_text())
        typer.echo(json.dumps(data, indent=2) if as_json else format_report(data))
