"""Loading a pipeline YAML: variables, per-stage defaults, overrides, validation with one-line errors.

A pipeline file has `name`, optional `work_dir`, optional `variables` (defaults for `${name}` references),
optional `defaults` (deep-merged under every stage; a stage's own values win) and `stages`.

`${data_root}` (or any `${name}`) in a string value is replaced by, in order of precedence: the `variables`
argument of `load_pipeline`, the environment variable `SVP_VAR_<NAME>` (e.g. `SVP_VAR_DATA_ROOT`; its own
prefix, so that another `SVP_*` setting such as `SVP_PEAK_TFLOPS` is never taken for a variable), the file's
own `variables:` block. Variables are folders: a relative one is taken from the current directory when given as
an argument or environment variable, and from the YAML file's folder when written in the file. Relative local
paths in a stage (`data`, `autoencoder.path`, `text_encoder.path`, `init_from.path`) and `work_dir` are relative to the YAML
file's folder. URIs with a scheme (`s3://`, `gs://`, …) are left as they are.
"""

from __future__ import annotations

import copy
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from core.config_paths import resolve_config_path, resolve_config_paths
from core.dotted_keys import set_dotted
from core.errors import UserError
from core.yaml_files import dotted_key, first_error, read_yaml_mapping
from training.config.checks import ConfigKeyError, OverrideError, check_pipeline
from training.config.schema import PipelineConfig, StageConfig


class PipelineFile(BaseModel):
    """The keys a pipeline YAML may have (what `--set` checks a dotted key against)."""

    name: str
    work_dir: str | None = None
    variables: dict[str, str] | None = None
    defaults: StageConfig | None = None
    stages: list[StageConfig]


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
PRESET_NAMES = ("tiny", "sana-video")
VAR_PREFIX = "SVP_VAR_"  # environment variables that give ${name} variables: SVP_VAR_DATA_ROOT


def load_preset(name: str, variables: dict[str, str] | None = None, **kwargs: Any) -> PipelineConfig:
    """A bundled pipeline (`tiny`: CPU scale, `sana-video`: the real four stages)."""
    if name not in PRESET_NAMES:
        raise UserError(f"unknown training preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return load_pipeline(preset_path(name), variables=variables, **kwargs)


def preset_path(name: str) -> Path:
    """The bundled file of a preset (its errors start with this path)."""
    return Path(str(resources.files("training") / "presets" / f"{name}.yaml"))


def load_pipeline_or_preset(
    name: str, variables: dict[str, str] | None = None, overrides: dict[str, Any] | None = None
) -> PipelineConfig:
    """`name` is a pipeline YAML file or, when no such file exists, the name of a bundled preset."""
    if not Path(name).exists() and name in PRESET_NAMES:
        return load_preset(name, variables=variables, overrides=overrides)
    if not Path(name).exists() and Path(name).suffix.lower() not in (".yaml", ".yml"):
        raise FileNotFoundError(
            f"no pipeline file or preset named {name!r} (presets: {', '.join(PRESET_NAMES)}; "
            f"or give a pipeline YAML file)"
        )
    return load_pipeline(name, variables=variables, overrides=overrides)


def load_pipeline(
    path: str | os.PathLike,
    variables: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> PipelineConfig:
    """Read, resolve and validate a pipeline file.

    `overrides` maps dotted keys to values, applied before the defaults are merged: `"defaults.steps"`,
    `"stages.video.steps"` (a stage by name or index), `"stages.*.checkpoint.every"` (every stage); a key the
    file's schema does not have is an error naming the valid keys (`core.dotted_keys`, as `svp train --set`).
    Every error is a UserError of one line: `FILE: KEY: what is wrong`.
    """
    path = Path(path)
    label = str(path)
    raw = read_yaml_mapping(path, "pipeline file")
    try:
        return build_pipeline(raw, path.parent, label, variables or {}, overrides or {})
    except OverrideError:
        raise
    except UserError as err:  # ConfigKeyError: a key of the file
        raise UserError(f"{label}: {err}") from None


def build_pipeline(
    raw: dict[str, Any], base: Path, label: str, variables: dict[str, str], overrides: dict[str, Any]
) -> PipelineConfig:
    """Resolve and validate the mapping of a pipeline (a YAML file's, or the `training` section of a
    pipeline file): `base` is the folder relative paths are taken from, `label` the source named in errors.
    Errors are `KEY: what is wrong` (the caller prefixes where the mapping came from)."""
    raw = copy.deepcopy(raw)
    stages = raw.get("stages")
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        raise ConfigKeyError("stages", "must be a list of stage mappings")
    for key, value in overrides.items():
        try:
            set_dotted(raw, key, value, PipelineFile)
        except UserError as err:  # a typo in the override, not in the file: name the override
            raise OverrideError(str(err)) from None
    file_vars = raw.pop("variables", None) or {}
    if not isinstance(file_vars, dict):
        raise ConfigKeyError("variables", "must be a mapping of name: value")
    defaults = raw.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        raise ConfigKeyError("defaults", "must be a mapping of stage keys")
    values = _variable_values(file_vars, variables, base)
    defaults = _substitute(defaults, values, "defaults")
    raw = _substitute(raw, values, "")
    raw["stages"] = [_merge(defaults, stage) for stage in raw["stages"]]
    for stage in raw["stages"]:
        resolve_config_paths(stage, STAGE_PATH_KEYS, base)
    resolve_config_paths(raw, ("work_dir",), base)

    try:
        pipeline = PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigKeyError(*_first_error(err, raw, defaults)) from None
    pipeline._source = label
    check_pipeline(pipeline)
    return pipeline


# Paths a stage may name, relative to the YAML that names them (`core.config_paths`).
STAGE_PATH_KEYS = (
    "data.*",
    "autoencoder.path",
    "text_encoder.path",
    "init_from.path",
    "eval.prompts_file",
    "eval.image",
    "eval.video",
    "eval.clip_checkpoint",
    "eval.aesthetic_mlp",
)


def _variable_values(file_vars: dict[str, Any], given: dict[str, str], base: Path) -> dict[str, str]:
    """Known variable values: the file's `variables:` (relative paths taken from the file's folder),
    overridden by `SVP_VAR_<NAME>` environment variables, overridden by the caller's values."""
    cwd = Path.cwd()
    values = {str(k): resolve_config_path(str(v), base) for k, v in file_vars.items()}
    values.update(
        {
            k.removeprefix(VAR_PREFIX).lower(): resolve_config_path(v, cwd)
            for k, v in os.environ.items()
            if k.startswith(VAR_PREFIX) and v
        }
    )
    values.update({k: resolve_config_path(str(v), cwd) for k, v in given.items()})
    return values


def _substitute(value: Any, values: dict[str, str], key: str) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match[1]
            if name not in values:
                raise ConfigKeyError(key or "<top>", _undefined_variable(name))
            return values[name]

        return _VAR.sub(replace, value)
    if isinstance(value, dict):
        return {k: _substitute(v, values, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def _undefined_variable(name: str) -> str:
    old = f"SVP_{name.upper()}"  # the variables' environment names before they had their own prefix
    if os.environ.get(old):
        return (
            f"undefined variable ${{{name}}}: {old} is set, but variables are read from "
            f"{VAR_PREFIX}{name.upper()} now (rename it, or give --var {name}=PATH)"
        )
    return (
        f"undefined variable ${{{name}}}: give it with --var {name}=PATH (or set "
        f"{VAR_PREFIX}{name.upper()}, or define it under 'variables:')"
    )


def _merge(defaults: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(defaults)
    for key, value in stage.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _first_error(err: ValidationError, raw: dict[str, Any], defaults: dict[str, Any]) -> tuple[str, str]:
    """The error to report (`core.yaml_files.first_error`) as (dotted key, message). A key that a stage
    only has through `defaults` is reported as `defaults.…`, where the user wrote it."""
    loc, message = first_error(err)
    key = dotted_key(loc)
    if len(loc) >= 3 and loc[0] == "stages" and isinstance(loc[1], int):
        stage_raw = raw["stages"][loc[1]] if loc[1] < len(raw["stages"]) else {}
        if _has_path(defaults, loc[2:]) and not _has_path(_without(stage_raw, defaults), loc[2:]):
            key = dotted_key(["defaults", *loc[2:]])
    return key, message


def _without(stage: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The part of a merged stage that did not come from `defaults` unchanged."""
    out: dict[str, Any] = {}
    for key, value in stage.items():
        if key not in defaults:
            out[key] = value
        elif isinstance(value, dict) and isinstance(defaults[key], dict):
            rest = _without(value, defaults[key])
            if rest:
                out[key] = rest
        elif value != defaults[key]:
            out[key] = value
    return out


def _has_path(data: Any, loc: list[Any]) -> bool:
    for part in loc:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and part < len(data)
        if not (in_dict or in_list):
            return False
        data = data[part]
    return True
