"""Decide what a training stage needs: skip (its export is the output of its current inputs), run (no export
yet) or rerun (an input changed, the export is incomplete, or the user forced it), with the reason.

Used by `training.launch.run_stage` before it trains, and by `svp pipeline plan`, which decides a whole
pipeline without running anything: there an upstream stage's fingerprint is the one it will have once it
has run (its inputs are known), so a change propagates down the chain without training anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.errors import StageConfigError
from training.fingerprints import (
    StageInputs,
    explain_change,
    export_record,
    platform_version,
    weights_fingerprint,
)

SKIP, RUN, RERUN = "skip", "run", "rerun"


def stage_dir(work_dir: Path, pipeline: Any, stage_name: str) -> Path:
    return Path(work_dir) / pipeline.name / stage_name


def export_dir_of(work_dir: Path, pipeline: Any, stage_name: str) -> Path:
    return stage_dir(work_dir, pipeline, stage_name) / "export"


@dataclass(frozen=True)
class StageDecision:
    stage: str
    action: str  # SKIP | RUN | RERUN
    reason: str
    inputs: StageInputs | None  # None while an input is decided by a step that has not run yet

    @property
    def fingerprint(self) -> str | None:
        return self.inputs.fingerprint if self.inputs is not None else None


def _init_fingerprint(
    pipeline: Any, stage: Any, work_dir: Path, upstream: Mapping[str, str | None]
) -> tuple[str | None, str]:
    """(fingerprint of what the stage starts from, "") or (None, why it is not known yet)."""
    spec = stage.init_from
    if spec is None:
        return None, ""
    if spec.path is not None:
        path = Path(spec.path)
        if not path.exists():
            raise FileNotFoundError(f"stage {stage.name}: init_from.path {path} does not exist")
        return weights_fingerprint(path), ""
    if spec.stage in upstream:
        planned = upstream[spec.stage]
        return planned, "" if planned else f"init_from stage {spec.stage} has to run first"
    export = export_dir_of(work_dir, pipeline, spec.stage)
    record, why = export_record(export)
    if record is not None:
        return record["fingerprint"], ""
    if (export / "model.safetensors").is_file() and not (export.parent / "export.partial").exists():
        return weights_fingerprint(export), ""  # an export written before fingerprints existed
    raise StageConfigError(
        f"stage {stage.name}: init_from.stage {spec.stage!r} has no finished export ({why}); run that stage first"
    )


def stage_inputs(
    pipeline: Any,
    stage: Any,
    work_dir: Path,
    *,
    upstream: Mapping[str, str | None] | None = None,
    data_pending: str | None = None,
) -> tuple[StageInputs | None, str]:
    """The stage's inputs, or (None, why not known yet): `data_pending` says that the data is rewritten by
    a step that runs first; `upstream` maps stage names to the fingerprint they will have (None: unknown)."""
    from training.data import StageData

    init, why = _init_fingerprint(pipeline, stage, work_dir, upstream or {})
    if why:
        return None, why
    if data_pending:
        return None, data_pending
    # Reading the index turns missing or unusable data into one clear error before anything starts.
    dataset = StageData(stage, 0, 1, stage.seed).dataset_fingerprint()
    return StageInputs(stage.training_inputs(), dataset, init, platform_version()), ""


def decide_stage(
    pipeline: Any,
    stage: Any,
    work_dir: Path,
    *,
    force: bool = False,
    upstream: Mapping[str, str | None] | None = None,
    data_pending: str | None = None,
) -> StageDecision:
    """Skip, run or rerun, and why (see the module docstring)."""
    inputs, pending = stage_inputs(pipeline, stage, work_dir, upstream=upstream, data_pending=data_pending)
    export = export_dir_of(work_dir, pipeline, stage.name)
    record, incomplete = export_record(export)
    exists = export.exists()
    if force:
        return StageDecision(stage.name, RERUN if exists else RUN, "forced (--force/--from)", inputs)
    if inputs is None:
        return StageDecision(stage.name, RERUN if exists else RUN, pending, None)
    if record is None:
        return StageDecision(stage.name, RERUN if exists else RUN, incomplete, inputs)
    if record["fingerprint"] == inputs.fingerprint:
        return StageDecision(stage.name, SKIP, f"export matches fingerprint {inputs.fingerprint}", inputs)
    why = f"fingerprint {record['fingerprint']} -> {inputs.fingerprint}: {explain_change(record, inputs)}"
    return StageDecision(stage.name, RERUN, why, inputs)
