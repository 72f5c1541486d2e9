"""`svp eval EXPORT... --prompts FILE`: score stage exports on fixed prompts and seeds, into their MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from core.errors import UserError

SEEDS_HELP = "Noise seeds, comma-separated: one video per prompt and seed."
CLIP_HELP = (
    "Local CLIP weights (.safetensors/.pt or an open_clip folder); without them the CLIP metrics are skipped."
)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_)


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds expects integers separated by commas, got {text!r}") from None


def eval_(
    exports: list[Path] = typer.Argument(..., help="Stage export folders (…/<pipeline>/<stage>/export)."),
    prompts: Path = typer.Option(..., "--prompts", help="Text file: one prompt a line (# comments skipped)."),
    seeds: str = typer.Option("0", "--seeds", help=SEEDS_HELP),
    frames: int = typer.Option(None, "--frames", help="Frames per video (default: one second of the stage)."),
    steps: int = typer.Option(10, "--steps", help="Sampler steps."),
    guidance_scale: float = typer.Option(6.0, help="Classifier-free guidance scale (<= 1 disables it)."),
    image: Path = typer.Option(None, help="Image-to-video: every video starts from this image."),
    video: Path = typer.Option(
        None, help="Continuation: every video continues this clip (scored against its last frame)."
    ),
    clip_model: str = typer.Option("ViT-L-14-quickgelu", help="open_clip architecture name or config .json."),
    clip_checkpoint: Path = typer.Option(None, help=CLIP_HELP),
    aesthetic_mlp: Path = typer.Option(None, help="Aesthetic MLP weights (needs --clip-checkpoint)."),
    device: str = typer.Option("auto", help="auto (a GPU when there is one), cpu, cuda, …"),
    ema: bool = typer.Option(False, "--ema", help="Use the EMA weights of each export."),
    out: Path = typer.Option(None, help="Folder for the videos and eval.json (default: beside each export)."),
    tracking_uri: str = typer.Option(
        None, "--tracking-uri", help="MLflow store (default: the export's own)."
    ),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the metrics to the export's run."),
    as_json: bool = typer.Option(False, "--json", help="Print the reports as JSON instead of a table."),
) -> None:
    """Generate each export's videos once, score them (flicker, motion, sanity; CLIP, aesthetic with weights)
    and log the metrics to the MLflow run that trained the export, at its step."""
    from training.config.schema import EvalSpec
    from training.inference.evaluation import evaluate_export, log_report, tracking_uri_for_export

    spec = EvalSpec(
        prompts_file=str(prompts),
        seeds=_seeds(seeds),
        num_frames=frames,
        steps=steps,
        guidance_scale=guidance_scale,
        image=str(image) if image else None,
        video=str(video) if video else None,
        clip_model=clip_model,
        clip_checkpoint=str(clip_checkpoint) if clip_checkpoint else None,
        aesthetic_mlp=str(aesthetic_mlp) if aesthetic_mlp else None,
        device=device,
    )
    reports = []
    for i, export in enumerate(exports):
        target = (
            None if out is None else (out if len(exports) == 1 else out / f"{i:02d}-{export.parent.name}")
        )
        report = evaluate_export(export, spec, target, ema=ema)
        uri = tracking_uri or tracking_uri_for_export(export)
        if mlflow and uri is not None and report.run_id is not None:
            log_report(report, uri)
            report.skipped.append(f"logged to run {report.run_id} at step {report.step} ({uri})")
        elif mlflow:
            report.skipped.append("not logged to MLflow: " + ("no store found" if uri is None else "no run"))
        reports.append(report)
    _print(reports, as_json)


def _print(reports: list, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in reports], indent=2, sort_keys=True))
        return
    import pandas as pd

    table = pd.DataFrame(
        [r.metrics for r in reports], index=[f"{Path(r.export).parent.name}@{r.step}" for r in reports]
    )
    typer.echo(table.T.to_string(float_format="{:.4g}".format))
    for report in reports:
        for line in dict.fromkeys(report.skipped):
            typer.echo(f"{Path(report.export).parent.name}: {line}")
        typer.echo(f"wrote {Path(report.out_dir) / 'eval.json'}")
