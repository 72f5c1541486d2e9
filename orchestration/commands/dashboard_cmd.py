"""`svp dashboard`: the Streamlit app (curation thresholds, experiments), bound to 127.0.0.1 by default."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("dashboard")
    def dashboard(
        curation: list[Path] = typer.Option(None, "--curation", help="Curation output folder (repeatable)."),
        runs: Path = typer.Option(
            None,
            "--runs",
            "--work-dir",
            help="Training work dir whose mlflow.db to show (svp train's --work-dir).",
        ),
        tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow store or server instead."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
        port: int = typer.Option(8501, "--port", help="Port to serve on."),
    ) -> None:
        """Tune curation thresholds by looking, and compare training runs (a local web page)."""
        from orchestration.dashboard.launch import run_dashboard

        raise typer.Exit(run_dashboard(curation or [], runs, tracking_uri, host, port))
