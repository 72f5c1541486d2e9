"""The pipeline file: one YAML for the whole platform, validated by pydantic (an unknown key is one line
naming the key and the file).

    name: my-pipeline                  # MLflow experiment, folder under work_dir
    work_dir: runs                     # relative paths are relative to this file
    curate:
      input: raw/videos                # folder, glob, fsspec URI or manifest
      output: curated                  # default: WORK_DIR/<name>/curated
      config: curate.yaml              # optional curation config
    filter:
      thresholds: thresholds.yaml      # re-applied to the clips table, shards rewritten (no decoding)
    encode:                            # optional: `svp encode` after the filter step; the stages read the latents
      stages: [video]                  # default: every stage reading the filter step's output
      actors: 1                        # encoder actors (one per GPU); gpus_per_actor, batch_size as `svp encode`
    training:                          # the `svp train` schema (variables, defaults, stages) …
      stages:
        - name: image
          data: [filter]               # … with `data` naming the filter step instead of a path
          ...
    # or  training: {preset: tiny, stages: [image, video], overrides: {"stages.*.steps": 2}}

A preset reads `${data_root}`, which is bound to the filter step's output unless `training.variables` sets it
(e.g. `sana-video`, whose stages read `${data_root}/video`, `${data_root}/video-720p`, …: then the stages
reading the curate step's output follow the filter step, the others read what is there).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from core.config_paths import resolve_config_path
from core.errors import UserError
from core.yaml_files import read_yaml_mapping
from training.config.schema import PipelineConfig, StageConfig

STEP_CURATE, STEP_FILTER, STEP_ENCODE = "curate", "filter", "encode"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CurateStep(_Strict):
    input: str = Field(min_length=1)
    output: str | None = None
    config: str | None = None


class FilterStep(_Strict):
    thresholds: str = Field(min_length=1)


class EncodeStep(_Strict):
    """Precompute latents and caption embeddings of `stages` (`svp encode`) once the shards are written."""

    stages: list[str] | None = None  # None: every stage that reads the filter step's output
    actors: int = Field(default=1, ge=1)
    gpus_per_actor: float | None = Field(default=None, ge=0)  # None: 1 when the cluster has GPUs, else 0
    batch_size: int = Field(default=4, ge=1)


class TrainingSection(BaseModel):
    """Either a bundled preset (with a subset of its stages and dotted overrides) or inline stages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = None
    stages: list[Any] = Field(default_factory=list)
    overrides: dict[str, Any] = Field(default_factory=dict)
    defaults: dict[str, Any] | None = None
    variables: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> TrainingSection:
        if self.preset is None and not self.stages:
            raise UserError("give 'preset' or a list of 'stages'")
        if self.preset is not None and any(not isinstance(s, str) for s in self.stages):
            raise UserError("with 'preset', 'stages' lists stage names of the preset")
        return self


class PipelineSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")
    work_dir: str = "svp-work"
    curate: CurateStep
    filter: FilterStep
    encode: EncodeStep | None = None
    training: TrainingSection
    # Where the file is (relative paths are taken from there); set by load_spec.
    _base: str = PrivateAttr(default=".")
    _source: str = PrivateAttr(default="<memory>")
    _overrides: dict[str, Any] = PrivateAttr(default_factory=dict)  # `--set` keys, already applied

    @property
    def base(self) -> str:
        return self._base

    @property
    def source(self) -> str:
        return self._source

    @property
    def overrides(self) -> dict[str, Any]:
        return self._overrides

    def path(self, value: str) -> str:
        """A path of the file, absolute (URIs with a scheme are left as they are)."""
        return resolve_config_path(value, self.base)

    @property
    def work(self) -> Path:
        return Path(self.path(self.work_dir))

    @property
    def curated(self) -> Path:
        return (
            Path(self.path(self.curate.output)) if self.curate.output else self.work / self.name / "curated"
        )

    def step_names(self, stage_names: list[str]) -> list[str]:
        encode = [STEP_ENCODE] if self.encode is not None else []
        return [STEP_CURATE, STEP_FILTER, *encode, *stage_names]


def load_spec(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> PipelineSpec:
    """Read and validate a pipeline file, with dotted keys set first (`svp pipeline … --set`): keys under
    `training.stages` and `training.defaults` become `training.overrides` (checked against the training
    schema when the training section is built), the others are checked here."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pipeline file not found: {path}")
    raw = read_yaml_mapping(path, "pipeline file")
    try:
        _apply_overrides(raw, overrides or {})
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{path}: {_first_problem(err)}") from None
    spec._base, spec._source = str(path.resolve().parent), str(path)
    spec._overrides = dict(overrides or {})
    return spec


def _first_problem(err: ValidationError) -> str:
    """The first error as `KEY: what is wrong`. A misspelt key also makes the key it meant missing: the
    unknown key is the cause, said as `--set` says it (with the key it may have meant, and the keys there)."""
    from core.dotted_keys import set_dotted

    errors = err.errors(include_url=False)
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    first = (unknown or errors)[0]
    key = ".".join(str(p) for p in first["loc"]) or "<top>"
    if unknown:
        try:
            set_dotted({}, key, None, PipelineSpec)
        except UserError as problem:
            return str(problem)
        return f"{key}: unknown key"
    return f"{key}: {first['msg']}"


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    from core.dotted_keys import set_dotted

    for key, value in overrides.items():
        training_key = key.removeprefix("training.")
        routed = key.startswith("training.") and training_key.split(".")[0] in ("stages", "defaults")
        if routed and isinstance(raw.get("training"), dict):
            training = raw["training"]
            training["overrides"] = {**(training.get("overrides") or {}), training_key: value}
        else:
            set_dotted(raw, key, value, PipelineSpec)


def settle_files(spec: PipelineSpec) -> PipelineSpec:
    """Copy the folder of the pipeline file (the job's working directory: the file and the thresholds and
    config it names) to `WORK_DIR/<name>/pipeline-files/<hash>/`, change into it and load the copy. A Ray
    job's working directory belongs to Ray and may be removed while the job runs; the copy also keeps the
    exact files a run used beside its outputs."""
    import hashlib
    import shutil

    source = Path(spec.source).resolve().parent
    blob = b"".join(p.name.encode() + p.read_bytes() for p in sorted(source.iterdir()) if p.is_file())
    target = spec.work / spec.name / "pipeline-files" / hashlib.sha256(blob).hexdigest()[:16]
    shutil.copytree(source, target, dirs_exist_ok=True)
    os.chdir(target)
    return load_spec(target / Path(spec.source).name, spec.overrides)


def training_pipeline(spec: PipelineSpec) -> PipelineConfig:
    """The training `PipelineConfig` of the file: stages' `data: [filter]` and a preset's `${data_root}`
    point at the filter step's output (the curation folder, whose shards it rewrites). An error names what
    the user wrote (the file's key or the `--set` flag), never the bundled preset's file."""
    from training.config import build_pipeline, load_preset
    from training.config.checks import OverrideError
    from training.config.loader import preset_path

    data = str(spec.curated)
    section = spec.training
    variables = {"data_root": data, **{k: spec.path(str(v)) for k, v in (section.variables or {}).items()}}
    if section.preset is not None:
        try:
            pipeline = load_preset(section.preset, variables=variables, overrides=section.overrides)
        except OverrideError as err:
            raise UserError(_training_error(spec, err.bare, "training.")) from None
        except UserError as err:
            message = str(err).removeprefix(f"{preset_path(section.preset)}: ")
            raise UserError(_training_error(spec, message, f"training (preset {section.preset})")) from None
        return _preset_stages(spec, pipeline)
    raw: dict[str, Any] = {"name": spec.name, "stages": [_bind_data(s, data) for s in section.stages]}
    if section.defaults is not None:
        raw["defaults"] = section.defaults
    try:
        return build_pipeline(raw, Path(spec.base), spec.source, variables, section.overrides)
    except UserError as err:  # ConfigKeyError, or a bad key of training.overrides
        message = err.bare if isinstance(err, OverrideError) else str(err)
        raise UserError(_training_error(spec, message, "training.")) from None


def _preset_stages(spec: PipelineSpec, pipeline: Any) -> Any:
    """The preset's stages that `training.stages` names (all when it names none), under the file's name."""
    section = spec.training
    keep = section.stages or pipeline.stage_names
    for name in keep:
        if name not in pipeline.stage_names:
            close = difflib.get_close_matches(name, pipeline.stage_names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(
                f"{spec.source}: training.stages: preset {section.preset} has no stage {name!r}{hint}; "
                f"its stages: {', '.join(pipeline.stage_names)}"
            )
    stages = [s for s in pipeline.stages if s.name in keep]
    return pipeline.model_copy(update={"name": spec.name, "stages": stages})


def _training_error(spec: PipelineSpec, message: str, where: str) -> str:
    """`message` (`KEY: what is wrong`) said against its source: the `--set` flag that gave the key, or the
    file's `training.overrides`, else the file's training section (`where`)."""
    for key in spec.training.overrides:
        if message.startswith(f"{key}: "):
            flag = f"training.{key}"
            if flag in spec.overrides:
                return f"--set {flag}: {message.removeprefix(f'{key}: ')}"
            return f"{spec.source}: training.overrides: {message}"
    separator = "" if where.endswith(".") else ": "
    return f"{spec.source}: {where}{separator}{message}"


def reads_curated(spec: PipelineSpec, stage: StageConfig) -> bool:
    """Whether a training stage reads the curate/filter steps' output (its folder or its shards)."""
    curated = spec.curated.resolve()
    for entry in stage.data:
        if "://" in entry:
            continue
        path = Path(entry).resolve()
        if path == curated or curated in path.parents:
            return True
    return False


def _bind_data(stage: Any, data: str) -> Any:
    if not isinstance(stage, dict) or not isinstance(stage.get("data"), list):
        return stage
    return {**stage, "data": [data if d == STEP_FILTER else d for d in stage["data"]]}
