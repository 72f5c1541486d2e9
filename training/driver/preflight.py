"""Pre-flight: every problem that can be known before training starts, found before anything is created.

`svp train` validates the pipeline YAML when it loads it; what the YAML cannot tell (does the data exist and
fill a bucket, do the weight folders exist, is the stage a selected stage starts from exported, does another
driver train a selected stage now, are the flags sane) is checked here, before the work dir, the MLflow store and its runs or a Ray job exist: a failed
pre-flight leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from core.errors import UserError
from training.config.schema import PipelineConfig, StageConfig
from training.driver.stage_lock import check_unlocked
from training.driver.stage_run import StageRun
from training.worker.checkpoints import export_complete


def check_before_training(
    pipeline: PipelineConfig, selected: Sequence[StageConfig], work_dir: Path, workers: int
) -> None:
    """Raise the first problem of the `selected` stages (in pipeline order) as a one-line user error."""
    from training.data.stage_data import StageData

    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    check_no_other_driver(pipeline, selected, work_dir)
    running: set[str] = set()
    for stage in selected:
        run = StageRun(pipeline, stage, work_dir, workers)
        if export_complete(run.export_dir):
            continue  # finished earlier: it will be skipped, its inputs no longer matter
        spec = stage.init_from
        if spec is not None and (spec.path is not None or spec.stage not in running):
            run.resolve_init_from()
        for section in ("autoencoder", "text_encoder"):
            path = getattr(stage, section).path
            if path is not None and "://" not in path and not Path(path).exists():
                raise FileNotFoundError(f"stage {stage.name!r}: {section}.path {path} does not exist")
        StageData(stage, 0, 1, stage.seed)  # reads the index: missing, empty or unfit data is an error
        running.add(stage.name)


def check_no_other_driver(pipeline: PipelineConfig, stages: Iterable[StageConfig], work_dir: Path) -> None:
    """Refuse, before Ray starts or anything is written, when a live driver holds one of `stages` in this
    work dir (`training.driver.stage_lock`; each stage run takes the lock itself too, for drivers that start
    together)."""
    for stage in stages:
        check_unlocked(StageRun(pipeline, stage, work_dir).lock_path, stage.name)
