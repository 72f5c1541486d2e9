"""The training stage as a step of the one step engine (`training.driver.step_engine`): its fingerprint (the
stage's inputs: `training.driver.fingerprints`), its record (`<stage>/export/fingerprint.json`) and the export of
exactly that fingerprint kept under `<stage>/exports/` (restored instead of retrained).

Used by `training.driver.stage_run.StageRun` before it trains, and by `svp pipeline plan`, which decides a whole
pipeline without running anything: there an upstream stage's fingerprint is the one it will have once it
has run (its inputs are known), so a change propagates down the chain without training anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from training.config.schema import PipelineConfig, StageConfig
from training.driver.fingerprints import (
    SUPERSEDED_DIR,
    StageInputs,
    explain_change,
    export_record,
    platform_version,
    weights_fingerprint,
)
from training.driver.step_engine import Action, Decision, Facts, decide, runs
from training.errors import StageConfigError

# The words of the engine's actions (`Action` compares equal to them).
SKIP, RUN, RERUN, RESTORE = Action.SKIP, Action.RUN, Action.RERUN, Action.RESTORE
FORCED = "forced (--force/--from)"


def stage_dir(work_dir: Path, pipeline: PipelineConfig, stage_name: str) -> Path:
    return Path(work_dir) / pipeline.name / stage_name


def export_dir_of(work_dir: Path, pipeline: PipelineConfig, stage_name: str) -> Path:
    return stage_dir(work_dir, pipeline, stage_name) / "export"


@dataclass(frozen=True)
class StageDecision(Decision):
    """The engine's decision for a stage, with the inputs it was made for (None while an input is decided
    by a step that has not run yet)."""

    inputs: StageInputs | None = field(default=None, compare=False)

    @property
    def stage(self) -> str:
        return self.step


def _init_fingerprint(
    pipeline: PipelineConfig, stage: StageConfig, work_dir: Path, upstream: Mapping[str, str | None]
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
    pipeline: PipelineConfig,
    stage: StageConfig,
    work_dir: Path,
    *,
    upstream: Mapping[str, str | None] | None = None,
    data_pending: str | None = None,
) -> tuple[StageInputs | None, str]:
    """The stage's inputs, or (None, why not known yet): `data_pending` says that the data is rewritten by
    a step that runs first; `upstream` maps stage names to the fingerprint they will have (None: unknown)."""
    from training.data.stage_data import StageData

    init, why = _init_fingerprint(pipeline, stage, work_dir, upstream or {})
    if why:
        return None, why
    if data_pending:
        return None, data_pending
    # Reading the index turns missing or unusable data into one clear error before anything starts.
    dataset = StageData(stage, 0, 1, stage.seed).dataset_fingerprint()
    return StageInputs(stage.training_inputs(), dataset, init, platform_version()), ""


def kept_export(stage_folder: Path, fingerprint: str) -> Path | None:
    """A complete export of exactly `fingerprint` kept under `<stage>/exports/` (superseded earlier), or None."""
    kept = Path(stage_folder) / SUPERSEDED_DIR
    for folder in sorted(kept.glob(f"{fingerprint}*")) if kept.is_dir() else []:
        if folder.name != fingerprint and not folder.name.removeprefix(fingerprint + "-").isdigit():
            continue
        record, _ = export_record(folder)
        if record is not None and record["fingerprint"] == fingerprint:
            return folder
    return None


@dataclass(frozen=True)
class StageStep:
    """A training stage as a `training.driver.step_engine.Step`. `data_pending`: why its data is not final yet
    (a curation step upstream rewrites it), decided again once it is."""

    pipeline: PipelineConfig
    stage: StageConfig
    work_dir: Path
    data_pending: str | None = None
    data_from: tuple[str, ...] = ()  # the steps whose run rewrites the stage's data (curate, filter, …)

    @property
    def name(self) -> str:
        return self.stage.name

    def inputs(self, earlier: Mapping[str, Decision]) -> tuple[StageInputs | None, str]:
        upstream = {name: d.fingerprint for name, d in earlier.items() if name in self.pipeline.stage_names}
        pending = self.data_pending
        rewriting = [name for name in self.data_from if runs(earlier.get(name))]
        if rewriting:  # the last one writes what the stage reads (shards, latents)
            pending = f"its data is rewritten by step {rewriting[-1]} first (decided again once it has run)"
        return stage_inputs(self.pipeline, self.stage, self.work_dir, upstream=upstream, data_pending=pending)

    def facts(self, earlier: Mapping[str, Decision]) -> Facts:
        inputs, pending = self.inputs(earlier)
        return self._facts(inputs, pending)

    def _facts(self, inputs: StageInputs | None, pending: str) -> Facts:
        export = export_dir_of(self.work_dir, self.pipeline, self.stage.name)
        record, incomplete = export_record(export)
        fingerprint = inputs.fingerprint if inputs is not None else None
        return Facts(
            fingerprint=fingerprint,
            recorded=record["fingerprint"] if record is not None else None,
            exists=export.exists(),
            problem=incomplete,
            pending=pending,
            changed=lambda: explain_change(record, inputs),
            kept=kept_export(export.parent, fingerprint) if fingerprint else None,
            matches="export",
        )

    def decide(self, earlier: Mapping[str, Decision], *, force: bool = False) -> StageDecision:
        inputs, pending = self.inputs(earlier)
        decision = decide(self.name, self._facts(inputs, pending), forced=force, forced_reason=FORCED)
        return StageDecision(**vars(decision), inputs=inputs)


def decide_stage(
    pipeline: PipelineConfig,
    stage: StageConfig,
    work_dir: Path,
    *,
    force: bool = False,
    upstream: Mapping[str, str | None] | None = None,
    data_pending: str | None = None,
) -> StageDecision:
    """Skip, run, rerun or restore, and why (`training.driver.step_engine.decide`). `upstream`: the fingerprints
    upstream stages will have (None: not known yet)."""
    earlier = {
        name: Decision(name, Action.RUN, "", fingerprint) for name, fingerprint in (upstream or {}).items()
    }
    return StageStep(pipeline, stage, Path(work_dir), data_pending).decide(earlier, force=force)
