"""Option pieces shared by several commands: NAME=VALUE lists and the Ray address."""

from __future__ import annotations

from model.errors import UserError

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
