"""Option pieces shared by several commands: NAME=VALUE lists, `--set KEY=VALUE`, `--verbose` and the Ray address."""

from __future__ import annotations

from typing import Any

import typer

from core.errors import UserError

ADDRESS_HELP = "Join a Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: RAY_ADDRESS, else a private local Ray)."


def name_value_pairs(pairs: list[str] | None, option: str) -> dict[str, str]:
    """`["A=1", "B=x"]` as `{"A": "1", "B": "x"}`; a pair without `=` is a one-line error naming `option`."""
    values = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"{option} expects NAME=VALUE, got {pair!r}")
        values[name] = value
    return values


VERBOSE_OPT = typer.Option(
    False, "--verbose", help="Stream the workers' output and every library's messages here too."
)


def set_help(config: str, example: str) -> str:
    """The help of a command's `--set`, with an example that this command accepts (each command's config
    has its own keys; tests/test_cli_help.py runs every example)."""
    return (
        f"Set a key of the {config} by dotted path, e.g. {example} (a list item by name, index or *); "
        "the value is read as YAML. Repeatable."
    )


def config_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`--set` pairs as {dotted key: value}, each value read as a YAML scalar (`3e-3`, `true`, `[1, 2]`)."""
    from core.dotted_keys import parse_value

    return {key: parse_value(value) for key, value in name_value_pairs(pairs, "--set").items()}
