"""How `svp … --help` shows parameters: arguments in usage lines as `OUT` (not typer's `{out}`), and boolean
flags as flags (`--ema/--no-ema`) without a `<bool>` value column, which read as if they took a value.

`apply(app)` gives every command and group of an app these classes (commands keep a class of their own).
"""

from __future__ import annotations

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup


class _PlainParams:
    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_bool_flag", False) and param.metavar is None:
                param.metavar = ""  # shown as the (empty) type column: the flag names say it all
        return params

    def collect_usage_pieces(self, ctx):  # noqa: ANN001, ANN201
        pieces = super().collect_usage_pieces(ctx)
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                typer_piece = param._usage_display_name()
                name = param.metavar or param.name.upper()
                name = (name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else "")
                pieces = [name if p == typer_piece else p for p in pieces]
        return pieces


class SvpCommand(_PlainParams, TyperCommand):
    pass


class SvpGroup(_PlainParams, TyperGroup):
    pass


def apply(app: typer.Typer) -> None:
    """Use SvpGroup/SvpCommand for `app`, its commands and its sub-apps, recursively."""
    app.info.cls = SvpGroup
    for command in app.registered_commands:
        if command.cls in (None, TyperCommand):  # typer's default, not a class the command chose
            command.cls = SvpCommand
    for group in app.registered_groups:
        group.cls = SvpGroup
        apply(group.typer_instance)
