"""Run a pipeline's stages in order, each starting from the previous one's export, under one MLflow parent run.

A stage whose export is present is finished and skipped, so rerunning the same command after a crash (of a
worker, a node or the driver) continues where the pipeline stopped: the unfinished stage resumes from its
latest checkpoint (`training.launch`), later stages follow. `stages` picks a subset by name; a picked stage
whose `init_from` stage has not been exported yet is an error that says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from training.launch import StageResult, resolve_work_dir, run_stage
from training.preflight import check_before_training
from training.tracking import Tracker, resolve_tracking_uri


def run_pipeline(
    pipeline: Any,
    stages: Sequence[str] | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0,
    address: str | None = None,
    work_dir: str | os.PathLike | None = None,
    *,
    max_failures: int = 3,
) -> list[StageResult]:
    """Train the pipeline's stages (all, or those named in `stages`, in pipeline order)."""
    selected = list(pipeline.stages)
    if stages:
        for name in stages:
            pipeline.stage(name)  # an unknown name is a one-line error listing the stages
        selected = [s for s in pipeline.stages if s.name in set(stages)]
    root = resolve_work_dir(pipeline, work_dir)
    check_before_training(pipeline, selected, root, workers)  # before the work dir and MLflow runs exist
    root.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(resolve_tracking_uri(root), pipeline.name, root)
    parent = tracker.parent_run()
    results: list[StageResult] = []
    ok = False
    try:
        for stage in selected:
            results.append(
                run_stage(
                    pipeline,
                    stage,
                    workers=workers,
                    gpus_per_worker=gpus_per_worker,
                    address=address,
                    work_dir=root,
                    tracker=tracker,
                    parent_run_id=parent,
                    max_failures=max_failures,
                )
            )
        ok = True
    finally:
        tracker.finish(parent, ok=ok)
    return results
