"""Decide every step of a pipeline file — skip, run or rerun, and why — without running anything.

A step reruns when its fingerprint changed (or its output is incomplete), and so does everything downstream:
the filter step's inputs include the curate step's fingerprint; a training stage's data is the filter
step's output, so when the filter step has to run the stage is decided again after it (its dataset
fingerprint is read from the new shard index: identical shards skip it); a stage's `init_from` is the
fingerprint its upstream stage will have. `from_step` forces that step and every later one; `only` limits
the plan to one step (the others are "not selected").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import UserError
from orchestration.pipeline.spec import (
    STEP_CURATE,
    STEP_FILTER,
    PipelineSpec,
    reads_curated,
    training_pipeline,
)
from orchestration.pipeline.steps import check_record, curate_inputs, explain, filter_inputs
from training.stage_plan import RERUN, RUN, SKIP, decide_stage

NOT_SELECTED = "not selected"


@dataclass(frozen=True)
class StepPlan:
    step: str
    action: str  # skip | run | rerun | not selected
    reason: str
    fingerprint: str | None


def check_step(name: str | None, names: list[str], option: str) -> None:
    if name is not None and name not in names:
        raise UserError(f"{option} {name!r}: no such step; steps: {', '.join(names)}")


def decide_curation_step(
    spec: PipelineSpec, step: str, inputs: Any, forced: bool, upstream: StepPlan | None = None
) -> StepPlan:
    """Skip only when the record's fingerprint matches and its output is verifiably complete; a step whose
    upstream step runs reruns too (`upstream`: the plan of the curate step, for the filter step)."""
    record, problem = check_record(spec, step)
    action = RERUN if record is not None else RUN
    if forced:
        exists = record is not None or (spec.curated / "clips.parquet").exists()
        return StepPlan(step, RERUN if exists else RUN, "forced (--from)", inputs.fingerprint)
    if upstream is not None and upstream.action not in (SKIP, NOT_SELECTED):
        return StepPlan(
            step, action, f"step {upstream.step} runs first (it rewrites the shards)", inputs.fingerprint
        )
    if record is None or record.get("fingerprint") != inputs.fingerprint:
        return StepPlan(step, action, explain(record, inputs), inputs.fingerprint)
    if problem is not None:
        return StepPlan(step, RERUN, f"output incomplete: {problem}", inputs.fingerprint)
    return StepPlan(step, SKIP, f"output matches fingerprint {inputs.fingerprint}", inputs.fingerprint)


def plan_pipeline(
    spec: PipelineSpec, *, from_step: str | None = None, only: str | None = None, training: Any = None
) -> list[StepPlan]:
    """One `StepPlan` per step, in order (see the module docstring)."""
    training = training or training_pipeline(spec)
    names = spec.step_names(training.stage_names)
    check_step(from_step, names, "--from")
    check_step(only, names, "--only")
    forced = set(names[names.index(from_step) :]) if from_step else set()

    curate = curate_inputs(spec)
    plans = [decide_curation_step(spec, STEP_CURATE, curate, STEP_CURATE in forced)]
    filt = filter_inputs(spec, curate.fingerprint)
    upstream = plans[0] if only in (None, STEP_CURATE) else None  # as `run` decides: curate runs only then
    plans.append(decide_curation_step(spec, STEP_FILTER, filt, STEP_FILTER in forced, upstream))
    pending = None
    if plans[-1].action != SKIP or plans[0].action != SKIP:
        pending = "its data is rewritten by step filter first (decided again once the shards exist)"
    upstream: dict[str, str | None] = {}
    for stage in training.stages:
        decision = decide_stage(
            training,
            stage,
            spec.work,
            force=stage.name in forced,
            upstream=upstream,
            data_pending=pending if reads_curated(spec, stage) else None,
        )
        upstream[stage.name] = decision.fingerprint
        plans.append(StepPlan(stage.name, decision.action, decision.reason, decision.fingerprint))
    if only is not None:
        plans = [
            p if p.step == only else StepPlan(p.step, NOT_SELECTED, "--only " + only, None) for p in plans
        ]
    return plans


def format_plan(plans: list[StepPlan]) -> str:
    width = max(len(p.step) for p in plans)
    return "\n".join(f"{p.step:<{width}}  {p.action:<12}  {p.reason}" for p in plans)


__all__ = ["NOT_SELECTED", "RERUN", "RUN", "SKIP", "StepPlan", "format_plan", "plan_pipeline"]
