"""Run a pipeline's stages in order, each starting from the previous one's export, under one MLflow parent run.

A stage whose export is complete and was made from its current inputs (config, data, init_from export,
platform version: `training.driver.fingerprints`) is skipped, so rerunning the same command after a crash (of a
worker, a node or the driver) continues where the pipeline stopped: the unfinished stage resumes from its
latest checkpoint (`training.driver.stage_run`), later stages follow. A stage whose inputs changed reruns, and so do
the stages after it (their init_from export changed). `stages` picks a subset by name; a picked stage whose
`init_from` stage has not been exported yet is an error that says so. `force` retrains every picked stage,
`force_from` the named stage and every later one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from training.config.schema import PipelineConfig, StageConfig
from training.driver.preflight import check_before_training
from training.driver.stage_run import StageResult, StageRun, resolve_work_dir
from training.tracking.runs import Tracker, ending_run, resolve_tracking_uri


def check_pipeline(
    pipeline: PipelineConfig,
    stages: Sequence[str] | None = None,
    workers: int = 1,
    work_dir: str | os.PathLike | None = None,
) -> list[StageConfig]:
    """The stages to train (all, or those named in `stages`, in pipeline order), after the pre-flight checks.
    Needs no Ray: the CLI calls it before connecting so a bad request fails in a second, and `run_pipeline`
    calls it again (cheap) before the work dir and MLflow runs exist."""
    selected = list(pipeline.stages)
    if stages:
        for name in stages:
            pipeline.stage(name)  # an unknown name is a one-line error listing the stages
        selected = [s for s in pipeline.stages if s.name in set(stages)]
    check_before_training(pipeline, selected, resolve_work_dir(pipeline, work_dir), workers)
    return selected


def run_pipeline(
    pipeline: PipelineConfig,
    stages: Sequence[str] | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0,
    work_dir: str | os.PathLike | None = None,
    *,
    max_failures: int = 3,
    force: bool = False,
    force_from: str | None = None,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
    log_every: int | None = None,
) -> list[StageResult]:
    """Train the pipeline's stages (all, or those named in `stages`, in pipeline order).

    `tracker`/`parent_run_id`: an MLflow parent run that a caller (`svp pipeline run`) holds and finishes;
    without them this call makes or re-attaches the pipeline's parent run and finishes it.
    """
    selected = check_pipeline(pipeline, stages, workers, work_dir)
    forced = set(s.name for s in selected) if force else set()
    if force_from is not None:
        pipeline.stage(force_from)
        forced |= set(pipeline.stage_names[pipeline.stage_names.index(force_from) :])
    root = resolve_work_dir(pipeline, work_dir)
    root.mkdir(parents=True, exist_ok=True)
    tracker = tracker or Tracker(resolve_tracking_uri(root), pipeline.name, root)
    owned_parent = None if parent_run_id is not None else tracker.parent_run()
    parent = parent_run_id or owned_parent
    results: list[StageResult] = []
    with ending_run(tracker, owned_parent):  # a caller's parent run is the caller's to end
        for stage in selected:
            run = StageRun(
                pipeline,
                stage,
                root,
                workers,
                gpus_per_worker,
                max_failures=max_failures,
                force=stage.name in forced,
                log_every=log_every,
                tracker=tracker,
                parent_run_id=parent,
            )
            result = run.run()
            status = "restored" if result.restored_from else "skipped" if result.skipped else "run"
            tracker.record_step(parent, stage.name, status, result.fingerprint)
            results.append(result)
    return results
