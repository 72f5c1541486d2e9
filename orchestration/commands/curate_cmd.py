"""`svp synth …` and `svp curate …`: make a synthetic corpus, curate a folder, re-filter, print the report."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from core.errors import UserError
from orchestration.commands.options import ADDRESS_HELP, VERBOSE_OPT, config_overrides, set_help


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
    curate_app = typer.Typer(
        help="Curate raw videos into scored clips and WebDataset shards (a Ray Data job).",
        invoke_without_command=True,
    )
    app.add_typer(curate_app, name="curate")
    curate_app.callback()(curate)
    curate_app.command("filter")(filter_)
    curate_app.command("prune")(prune)
    curate_app.command("report")(report)


def synth(
    out: Path = typer.Argument(..., help="Folder to write: OUT/videos/ (inputs) and OUT/ground_truth.json."),
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


def curate(
    ctx: typer.Context,
    input: str = typer.Option(None, "--input", help="Folder, glob, fsspec URI (s3://, gs://) or manifest."),
    output: Path = typer.Option(None, "--output", help="Output folder (rerun the same command to resume)."),
    config: Path = typer.Option(None, "--config", help="Curation config YAML."),
    min_clip_s: float = typer.Option(None, "--min-clip-s", help="Shortest clip, seconds."),
    max_clip_s: float = typer.Option(None, "--max-clip-s", help="Longest clip, seconds."),
    thresholds: Path = typer.Option(None, "--thresholds", help="Thresholds YAML (default: built in)."),
    address: str = typer.Option(
        None,
        "--address",
        help=ADDRESS_HELP,
    ),
    set_: list[str] = typer.Option(None, "--set", help=set_help("curation config", "scenes.min_clip_s=2")),
    verbose: bool = VERBOSE_OPT,
) -> None:
    """svp curate --input IN --output OUT [--config FILE] [--set KEY=VALUE] [--address ADDR]"""
    if ctx.invoked_subcommand is not None:
        return
    if input is None or output is None:
        raise UserError(
            "svp curate needs --input IN and --output OUT (or a subcommand: filter, report, prune)"
        )
    from curation.config import load_config
    from curation.pipeline import check_curation, run_curation
    from orchestration.console import ray_init_options, setup_logging
    from orchestration.ray_connect import ray_connection

    setup_logging(verbose)
    options = {
        "scenes.min_clip_s": min_clip_s,
        "scenes.max_clip_s": max_clip_s,
        "thresholds_file": str(thresholds) if thresholds else None,
    }
    cfg = load_config(config, {**options, **config_overrides(set_)})
    request = check_curation(input, output, cfg)  # before Ray starts: a bad request fails in a second
    with ray_connection(address, **ray_init_options(verbose)):  # workers' output: Ray's log files
        report = run_curation(input, output, cfg, request=request)
    _print_report(output, report, limit=20)


def filter_(
    out: Path = typer.Argument(..., help="A curation output folder."),
    thresholds: Path = typer.Option(..., "--thresholds", help="New thresholds YAML."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Only print what the thresholds would keep (counts, hours); write nothing.",
    ),
    set_: list[str] = typer.Option(
        None,
        "--set",
        help=set_help("thresholds", "scores.aesthetic_score.min=5"),
    ),
) -> None:
    """Re-apply thresholds to clips.parquet and rewrite shards, without decoding anything for scoring.

    The thresholds replaced stay in OUT/thresholds-history/<hash>.yaml; dropped clips keep their transcodes
    (svp curate prune OUT removes them)."""
    from curation.refilter import refilter
    from curation.report import format_report

    report = refilter(out, thresholds, dry_run=dry_run, overrides=config_overrides(set_))
    if dry_run:
        typer.echo(f"dry run: {out} is unchanged; these thresholds would give:")
    typer.echo(format_report(report))


def prune(out: Path = typer.Argument(..., help="A curation output folder.")) -> None:
    """Delete the transcodes of clips the thresholds drop (kept so that re-filtering decodes nothing)."""
    from curation.refilter import prune_transcodes

    files, size = prune_transcodes(out)
    typer.echo(f"removed {files} transcoded clips ({size / 1e6:.1f} MB) that no shard holds")


def report(
    out: Path = typer.Argument(..., help="A curation output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw report.json."),
    limit: int = typer.Option(20, "--limit", help="Rejected and failed files to list by name."),
) -> None:
    """Print the report of a curation run as tables (times as h:mm:ss), with the rejected files."""
    path = out / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no report.json in {out}: run svp curate --output {out} first")
    data = json.loads(path.read_text())
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        _print_report(out, data, limit)


def _print_report(out: Path, report: dict, limit: int) -> None:
    from curation.report import format_rejected_files, format_report
    from curation.tables import SOURCES_FILE, read_table

    typer.echo(format_report(report))
    if (out / SOURCES_FILE).is_file():
        files = format_rejected_files(read_table(out / SOURCES_FILE), limit)
        if files:
            typer.echo(files)
