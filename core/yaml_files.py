"""YAML files validated by pydantic, with one-line errors that name the file and the key.

Shared by the curation config (`curation.config`) and the thresholds file (`curation.thresholds`).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from core.errors import UserError


def read_yaml_mapping(path: str | os.PathLike, what: str = "file") -> dict:
    """The top-level mapping of a YAML file ({} for an empty file); any problem is one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def validation_message(err: ValidationError, path: str | os.PathLike) -> str:
    """One line naming the file and the first offending key, e.g. `t.yaml: scores.x.min: Input should be …`."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{path}: {key}: {message}{more}"
