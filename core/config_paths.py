"""The one rule for relative paths in config files: relative to the file that names them.

A curation config, a thresholds file, a training pipeline YAML and a pipeline file may all name files and
folders; a relative one is taken from the folder of the file it is written in, never from the current
directory of whoever runs `svp` (or of a Ray worker, which runs elsewhere). Values given on the command line
(`--var`, `--thresholds`, `--set`) are relative to the current directory, as any command-line path.
URIs with a scheme (`s3://`, `gs://`, …) are left as they are. It lives in `core/`, the bottom of the import
chain, so that every package's loader applies the same rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def resolve_config_path(value: str, base: str | Path) -> str:
    """`value` as an absolute path, taken from the folder `base` when relative; URIs are kept as they are."""
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (Path(base) / path).resolve())


def resolve_config_paths(raw: dict[str, Any], keys: tuple[str, ...], base: str | Path) -> None:
    """Resolve, in place, the string values at the dotted `keys` of a raw config mapping (`*` is every item
    of a list, e.g. `data.*`); keys that are absent or not strings are left alone."""
    for key in keys:
        _resolve_at(raw, key.split("."), base)


def _resolve_at(node: Any, parts: list[str], base: str | Path) -> None:
    part, rest = parts[0], parts[1:]
    if part == "*" and isinstance(node, list):
        children = list(range(len(node)))
    elif isinstance(node, dict) and part in node:
        children = [part]
    else:
        return
    for child in children:
        if rest:
            _resolve_at(node[child], rest, base)
        elif isinstance(node[child], str):
            node[child] = resolve_config_path(node[child], base)
