"""`svp model …`: inspect model presets."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    model_app = typer.Typer(help="Inspect Linear DiT presets.", no_args_is_help=True)
    app.add_typer(model_app, name="model")

    @model_app.command("info")
    def info(
        preset: str = typer.Argument(..., help="Preset name, e.g. tiny, sana-video-2b-480p."),
        frames: int = typer.Option(81, help="Pixel frames of the video."),
        height: int = typer.Option(480, help="Pixel height."),
        width: int = typer.Option(832, help="Pixel width."),
    ) -> None:
        """Parameter count, tokens per video and block-AR cache bytes per layer."""
        from model.info import describe

        typer.echo(describe(preset, frames=frames, height=height, width=width))
