"""Run a pipeline file: each step in order, skipped when its fingerprint matches its finished output,
under one MLflow parent run that records every step as run / skipped with its fingerprint.

Runs on the Ray this process is connected to (`orchestration.ray_connect`; inside a Ray job, the job's
cluster). Training stages go through `training.pipeline.run_pipeline`, which applies the same rule per stage
once the data exists, so a re-filter that leaves the shards unchanged retrains nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestration.console import stage_summary
from orchestration.pipeline.plan import check_step, decide_curation_step
from orchestration.pipeline.spec import STEP_CURATE, STEP_FILTER, PipelineSpec, training_pipeline
from orchestration.pipeline.steps import curate_inputs, filter_inputs, run_curate, run_filter
from training.stage_plan import SKIP

if TYPE_CHECKING:
    from training.stage_run import StageResult


def run_pipeline_file(
    spec: PipelineSpec,
    *,
    from_step: str | None = None,
    only: str | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0,
    max_failures: int = 3,
    echo: Callable[[str], None] = print,
) -> list[StageResult]:
    """Run the steps that need it; returns the training stages' results."""
    from training.pipeline import run_pipeline
    from training.preflight import check_no_other_driver
    from training.tracking import Tracker, ending_run, resolve_tracking_uri

    training = training_pipeline(spec)
    names = spec.step_names(training.stage_names)
    check_step(from_step, names, "--from")
    check_step(only, names, "--only")
    forced = set(names[names.index(from_step) :]) if from_step else set()
    selected = {only} if only else set(names)
    work = spec.work
    stages = [name for name in training.stage_names if name in selected]
    # Another driver training one of them: refuse before curating into the data it trains on.
    check_no_other_driver(training, [training.stage(name) for name in stages], work)
    work.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(resolve_tracking_uri(work), spec.name, work)
    parent = tracker.parent_run()
    with ending_run(tracker, parent):
        curate = curate_inputs(spec)
        curated = _curation(spec, tracker, parent, STEP_CURATE, curate, run_curate, forced, selected, echo)
        filt = filter_inputs(spec, curate.fingerprint)
        _curation(spec, tracker, parent, STEP_FILTER, filt, run_filter, forced, selected, echo, curated)
        results = []
        if stages:
            first_forced = next((n for n in training.stage_names if n in forced), None)
            results = run_pipeline(
                training,
                stages=stages,
                workers=workers,
                gpus_per_worker=gpus_per_worker,
                work_dir=work,
                max_failures=max_failures,
                force_from=first_forced,
                tracker=tracker,
                parent_run_id=parent,
            )
            for result in results:
                echo(stage_summary(result))
    return results


def _curation(spec, tracker, parent, step, inputs, runner, forced, selected, echo, upstream=None):
    """Run or skip one curation step (saying which and why); returns its plan (None when not selected)."""
    if step not in selected:
        return None
    plan = decide_curation_step(spec, step, inputs, step in forced, upstream)
    if plan.action == SKIP:
        echo(f"{step}: skipped ({plan.reason})")
        tracker.record_step(parent, step, "skipped", inputs.fingerprint)
        return plan
    echo(f"{step}: {plan.action} ({plan.reason})")
    runner(spec, inputs)
    tracker.record_step(parent, step, plan.action, inputs.fingerprint)
    return plan
