"""Command groups of the `svp` CLI, one module each.

A module here defines `register(app)`; `register_all` calls them in a fixed order. Modules import their
package lazily inside each command so that `svp --help` stays fast.
"""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = (
    "model_cmd",
    "curate_cmd",
    "train_cmd",
    "generate_cmd",
    "encode_cmd",
    "pipeline_cmd",
    "jobs_cmd",
    "demo_cmd",
    "dashboard_cmd",
    "runs_cmd",
    "eval_cmd",
)


def register_all(app: typer.Typer) -> None:
    from orchestration.commands.usage import apply

    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(app)
    apply(app)
