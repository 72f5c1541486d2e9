"""`svp runs list` and `svp runs compare`: the experiments page's tables and loss plot, for terminals."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from core.errors import UserError


def _client_and_table(runs: Path | None, tracking_uri: str | None, pipeline: str | None):
    from orchestration.dashboard.run_table import client_for, stage_table, tracking_uri_for

    client = client_for(tracking_uri_for(runs, tracking_uri))
    return client, stage_table(client, pipeline)


RUNS_OPT = typer.Option(
    None, "--runs", "--work-dir", help="Work dir whose mlflow.db to read (svp train's --work-dir)."
)
URI_OPT = typer.Option(None, "--tracking-uri", help="MLflow store or server (default MLFLOW_TRACKING_URI).")


def register(app: typer.Typer) -> None:
    runs_app = typer.Typer(help="List and compare training runs (the MLflow store the trainer writes).")
    app.add_typer(runs_app, name="runs")
    runs_app.command("list")(list_)
    runs_app.command("compare")(compare)


def list_(
    pipeline: str = typer.Option(None, "--pipeline", help="Only this pipeline's runs."),
    runs: Path = RUNS_OPT,
    tracking_uri: str = URI_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """One line per stage run: status, steps, final and best loss, throughput, MFU, wall time, lineage."""
    _, table = _client_and_table(runs, tracking_uri, pipeline)
    if as_json:
        typer.echo(table.to_json(orient="records", indent=2))
    else:
        typer.echo(table.drop(columns=["pipeline_run"]).to_string(index=False, float_format="{:.4g}".format))


def _eval_text(evals) -> str:
    if not len(evals):
        return "  (no eval metrics: `svp eval EXPORT --prompts FILE` or a stage's eval: block)"
    return evals.to_string(float_format="{:.4g}".format)


def compare(
    names: list[str] = typer.Argument(
        ...,
        help="Run ids (or their first 4+ characters) or stage names: a stage name is its newest run, or "
        "every run of that stage when it is the only name.",
    ),
    metric: str = typer.Option("train/loss", "--metric", help="Metric to overlay."),
    plot: Path = typer.Option(None, "--plot", help="Write the overlaid curves to this PNG."),
    runs: Path = RUNS_OPT,
    tracking_uri: str = URI_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """What differs between runs: params, lineage, final metrics; optionally a plot of `--metric`."""
    from orchestration.dashboard import run_table as rt

    client, table = _client_and_table(runs, tracking_uri, None)
    rows = rt.resolve(table, names)
    if len(rows) < 2:
        raise UserError(f"svp runs compare needs two or more runs; {' '.join(names)} names only one")
    params, lineage = rt.differing_params(client, rows), rt.differing_lineage(client, rows)
    perf = rt.perf_table(client, rows)
    evals = rt.eval_table(client, rows)
    curves = rt.metric_curves(client, rows, metric)
    if plot is not None:
        rt.plot_curves(curves, metric, plot)
    if as_json:
        payload = {
            "runs": rows.to_dict("records"),
            "params": params.to_dict(orient="index"),
            "lineage": lineage.to_dict(orient="index"),
            "perf": perf.to_dict(orient="index"),
            "eval": evals.to_dict(orient="index"),
            metric: {k: v.to_dict("list") for k, v in curves.items()},
        }
        typer.echo(json.dumps(payload, indent=2, default=str))
        return
    show = rows[["stage", "run_id", "status", "steps", "final_loss", "best_loss", "wall_s"]]
    typer.echo(show.to_string(index=False, float_format="{:.4g}".format))
    typer.echo("\nparams that differ:\n" + (params.to_string() if len(params) else "  (none)"))
    typer.echo("\nlineage that differs:\n" + (lineage.to_string() if len(lineage) else "  (none)"))
    typer.echo("\nperf (last value):\n" + perf.to_string(float_format="{:.4g}".format))
    typer.echo("\neval (latest, beside the data it trained on):\n" + _eval_text(evals))
    if plot is not None:
        typer.echo(f"\nplot: {plot}")
