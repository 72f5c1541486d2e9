"""Run a pipeline file: execute its plan (`orchestration.pipeline.plan`), step by step, under one MLflow
parent run that records every step as run / rerun / skipped / restored with its fingerprint.

Runs on the Ray that `ray` connects (`orchestration.ray_connect`; inside a Ray job, the job's cluster), which
is started or joined only once the plan has a step to run: a pipeline with nothing to do answers in seconds,
without starting Ray. The curation steps run as planned. The training stages go through
`training.driver.pipeline.run_pipeline`, whose stages decide with the same `training.driver.stage_plan.StageStep` rule:
the same decision as the plan, except for a stage the plan said waits for the data ("decided again once it
has run"), which is now decided on the rewritten shards, so a re-filter that leaves them unchanged
retrains nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestration.console import stage_summary
from orchestration.pipeline.plan import check_step, forced_steps, pipeline_steps
from orchestration.pipeline.spec import PipelineSpec, training_pipeline
from orchestration.pipeline.steps import CurationStep
from training.config.schema import PipelineConfig
from training.driver.step_engine import Action, Decision, plan, runs

if TYPE_CHECKING:
    from training.driver.stage_run import StageResult
    from training.tracking.runs import Tracker


def run_pipeline_file(
    spec: PipelineSpec,
    *,
    from_step: str | None = None,
    only: str | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0,
    max_failures: int = 3,
    ray: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
    echo: Callable[[str], None] = print,
) -> list[StageResult]:
    """Run the steps that need it; returns the training stages' results. `ray()` connects Ray for the steps
    that run (default: the Ray this process is already connected to)."""
    from training.driver.pipeline import run_pipeline
    from training.driver.preflight import check_no_other_driver
    from training.tracking.runs import Tracker, ending_run, resolve_tracking_uri

    training = training_pipeline(spec)
    names = spec.step_names(training.stage_names)
    check_step(from_step, names, "--from")
    check_step(only, names, "--only")
    forced = forced_steps(names, from_step)
    work = spec.work
    # Another driver training one of them: refuse before curating into the data it trains on.
    selected = [training.stage(n) for n in training.stage_names if only in (None, n)]
    check_no_other_driver(training, selected, work)
    work.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(resolve_tracking_uri(work), spec.name, work)
    parent = tracker.parent_run()
    with ending_run(tracker, parent):
        steps = pipeline_steps(spec, training)
        decisions = plan(steps, forced=forced, only=only)
        with ray() if any(runs(d) for d in decisions) else contextlib.nullcontext():
            for step, decision in zip(steps, decisions, strict=True):
                if isinstance(step, CurationStep):
                    _curation(step, decision, tracker, parent, echo)
            stages = _stages_to_train(training, decisions)
            results = []
            if stages:  # skipped stages only say so (no Ray needed)
                results = run_pipeline(
                    training,
                    stages=stages,
                    workers=workers,
                    gpus_per_worker=gpus_per_worker,
                    work_dir=work,
                    max_failures=max_failures,
                    force_from=next((n for n in training.stage_names if n in forced), None),
                    tracker=tracker,
                    parent_run_id=parent,
                )
                for result in results:
                    echo(stage_summary(result))
    return results


def _stages_to_train(training: PipelineConfig, decisions: list[Decision]) -> list[str]:
    selected = {d.step for d in decisions if d.action != Action.NOT_SELECTED}
    return [name for name in training.stage_names if name in selected]


def _curation(
    step: CurationStep, decision: Decision, tracker: Tracker, parent: str, echo: Callable[[str], None]
) -> None:
    """Execute one curation step's decision (saying which and why) and record it on the parent run."""
    if decision.action == Action.NOT_SELECTED:
        return
    if not runs(decision):
        echo(f"{step.name}: skipped ({decision.reason})")
        tracker.record_step(parent, step.name, "skipped", decision.fingerprint)
        return
    echo(f"{step.name}: {decision.action} ({decision.reason})")
    step.execute(decision)
    tracker.record_step(parent, step.name, str(decision.action), decision.fingerprint)
