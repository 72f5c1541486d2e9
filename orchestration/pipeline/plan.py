"""Decide every step of a pipeline file — skip, run, rerun or restore, and why — without running anything.

The steps (curate, filter, encode when the file has an `encode:` block, each training stage) are `training.driver.step_engine.Step`s decided in order by the one
rule (`training.driver.step_engine.decide`); `svp pipeline run` executes this very plan. A step reruns when its
fingerprint changed (or its output is incomplete), and so does everything downstream: the filter step's
inputs include the curate step's fingerprint; a training stage's data is the filter step's output, so when
the filter step has to run the stage is decided again after it (its dataset fingerprint is read from the new
shard index: identical shards skip it); a stage's `init_from` is the fingerprint its upstream stage will
have. `from_step` forces that step and every later one; `only` limits the plan to one step (the others are
"not selected").
"""

from __future__ import annotations

from core.errors import UserError
from orchestration.pipeline.encode_step import encode_step, encoded_stages
from orchestration.pipeline.spec import (
    STEP_CURATE,
    STEP_ENCODE,
    STEP_FILTER,
    PipelineSpec,
    reads_curated,
    training_pipeline,
)
from orchestration.pipeline.steps import CurationStep, curate_inputs, filter_inputs, run_curate, run_filter
from training.config.schema import PipelineConfig
from training.driver.stage_plan import StageStep
from training.driver.step_engine import Action, Decision, Step, format_plan, plan

NOT_SELECTED = Action.NOT_SELECTED


def check_step(name: str | None, names: list[str], option: str) -> None:
    if name is not None and name not in names:
        raise UserError(f"{option} {name!r}: no such step; steps: {', '.join(names)}")


def pipeline_steps(spec: PipelineSpec, training: PipelineConfig) -> list[Step]:
    """The file's steps in order: curate, filter, encode (with an `encode:` block), then the training stages
    (those reading the curated folder wait for the curation steps, those encoded for the encode step too)."""
    curate = curate_inputs(spec)
    filt = filter_inputs(spec, curate.fingerprint)
    steps: list[Step] = [
        CurationStep(spec, curate, run_curate),
        CurationStep(spec, filt, run_filter, upstream=STEP_CURATE),
    ]
    encoded: set[str] = set()
    if spec.encode is not None:
        steps.append(encode_step(spec, training, filt.fingerprint))
        encoded = {stage.name for stage in encoded_stages(spec, training)}
    for stage in training.stages:
        data_from: tuple[str, ...] = ()
        if reads_curated(spec, stage):
            data_from = (STEP_CURATE, STEP_FILTER, *([STEP_ENCODE] if stage.name in encoded else []))
        steps.append(StageStep(training, stage, spec.work, data_from=data_from))
    return steps


def forced_steps(names: list[str], from_step: str | None) -> list[str]:
    return names[names.index(from_step) :] if from_step else []


def plan_pipeline(
    spec: PipelineSpec,
    *,
    from_step: str | None = None,
    only: str | None = None,
    training: PipelineConfig | None = None,
) -> list[Decision]:
    """One `Decision` per step, in order (see the module docstring)."""
    training = training or training_pipeline(spec)
    names = spec.step_names(training.stage_names)
    check_step(from_step, names, "--from")
    check_step(only, names, "--only")
    return plan(pipeline_steps(spec, training), forced=forced_steps(names, from_step), only=only)


__all__ = ["NOT_SELECTED", "check_step", "format_plan", "pipeline_steps", "plan_pipeline"]
