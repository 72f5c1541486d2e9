"""YAML files validated by pydantic, with one-line errors that name the file and the key.

The one loader (`load_yaml_model`, or `validate_mapping` for a mapping read or built elsewhere) and the one
error formatter (`validation_message`, `first_error`) of every config `svp` reads: the curation config, the
thresholds file, the pipeline file and the training pipeline YAML.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from core.dotted_keys import set_dotted
from core.errors import UserError

M = TypeVar("M", bound=BaseModel)
UNKNOWN_KEY_ERRORS = ("extra_forbidden", "unexpected_keyword_argument")


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
        problem = getattr(err, "problem", None)
        raise UserError(f"{path}: invalid YAML{where}" + (f": {problem}" if problem else "")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_yaml_model(
    path: str | os.PathLike,
    model: type[M],
    overrides: Mapping[str, Any] | None = None,
    what: str = "file",
    prepare: Callable[[dict], None] | None = None,
) -> M:
    """Load a YAML file into a pydantic model (`validate_mapping`); any problem is a one-line
    UserError/FileNotFoundError naming the file."""
    return validate_mapping(read_yaml_mapping(path, what), model, str(path), overrides, prepare)


def validate_mapping(
    raw: dict,
    model: type[M],
    where: str,
    overrides: Mapping[str, Any] | None = None,
    prepare: Callable[[dict], None] | None = None,
) -> M:
    """`prepare(raw)` (resolve paths, route keys), set the dotted `overrides` (`--set`, checked against
    `model` by `core.dotted_keys`), then validate; every error is one line starting with `where: `."""
    try:
        if prepare is not None:
            prepare(raw)
        for dotted, value in (overrides or {}).items():
            set_dotted(raw, dotted, value, model)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise UserError(validation_message(err, where)) from None


def validation_message(err: ValidationError, where: str | os.PathLike) -> str:
    """One line naming the file and the offending key, e.g. `t.yaml: scores.x.min: Input should be …`."""
    loc, message = first_error(err)
    return f"{where}: {dotted_key(loc) or '(top level)'}: {message}"


def first_error(err: ValidationError) -> tuple[list[Any], str]:
    """(location, message) of the error to report, with how many more there are. A misspelt key also makes
    the key it meant missing: the unknown key, which is the cause, is reported, with the missing key it
    is spelt like."""
    errors = err.errors(include_url=False)
    unknown = [e for e in errors if e["type"] in UNKNOWN_KEY_ERRORS]
    first = unknown[0] if unknown else errors[0]
    loc = list(first["loc"])
    message = first["msg"].removeprefix("Value error, ")  # pydantic's prefix of a validator's own message
    if first["type"] in UNKNOWN_KEY_ERRORS:
        message = "unknown key" + _did_you_mean(loc, errors)
    more = len(errors) - 1
    return loc, message + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")


def _did_you_mean(loc: list[Any], errors: list[Any]) -> str:
    """` (did you mean 'steps'?)` when a key missing next to the unknown one is spelt like it."""
    missing = [e["loc"][-1] for e in errors if e["type"] == "missing" and list(e["loc"][:-1]) == loc[:-1]]
    close = difflib.get_close_matches(str(loc[-1]), [str(m) for m in missing], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def dotted_key(loc: list[Any]) -> str:
    """A pydantic location as the user writes it: `stages[1].optimizer.lr`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
