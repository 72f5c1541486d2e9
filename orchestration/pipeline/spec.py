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

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from core.config_paths import resolve_config_path
from core.errors import UserError

STEP_CURATE, STEP_FILTER = "curate", "filter"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CurateStep(_Strict):
    input: str = Field(min_length=1)
    output: str | None = None
    config: str | None = None


class FilterStep(_Strict):
    thresholds: str = Field(min_length=1)


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
        return [STEP_CURATE, STEP_FILTER, *stage_names]


def load_spec(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> PipelineSpec:
    """Read and validate a pipeline file, with dotted keys set first (`svp pipeline … --set`): keys under
    `training.stages` and `training.defaults` become `training.overrides` (checked against the training
    schema when the training section is built), the others are checked here."""
    from core.yaml_files import load_yaml_model

    path = Path(path)
    spec = load_yaml_model(
        path, PipelineSpec, what="pipeline file", prepare=lambda raw: _apply_overrides(raw, overrides or {})
    )
    spec._base, spec._source = str(path.resolve().parent), str(path)
    spec._overrides = dict(overrides or {})
    return spec


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


def training_pipeline(spec: PipelineSpec) -> Any:
    """The training `PipelineConfig` of the file: stages' `data: [filter]` and a preset's `${data_root}`
    point at the filter step's output (the curation folder, whose shards it rewrites)."""
    from training.config import build_pipeline, load_preset

    data = str(spec.curated)
    section = spec.training
    variables = {"data_root": data, **{k: spec.path(str(v)) for k, v in (section.variables or {}).items()}}
    if section.preset is not None:
        pipeline = load_preset(section.preset, variables=variables, overrides=section.overrides)
        keep = section.stages or pipeline.stage_names
        for name in keep:
            pipeline.stage(name)
        stages = [s for s in pipeline.stages if s.name in keep]
        return pipeline.model_copy(update={"name": spec.name, "stages": stages})
    raw: dict[str, Any] = {"name": spec.name, "stages": [_bind_data(s, data) for s in section.stages]}
    if section.defaults is not None:
        raw["defaults"] = section.defaults
    try:
        return build_pipeline(raw, Path(spec.base), spec.source, variables, section.overrides)
    except UserError as err:  # ConfigKeyError, or a bad key of training.overrides
        raise UserError(f"{spec.source}: training.{err}") from None


def reads_curated(spec: PipelineSpec, stage: Any) -> bool:
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
