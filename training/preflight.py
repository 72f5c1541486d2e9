"""Pre-flight: every problem that can be known before training starts, found before anything is created.

`svp train` validates the pipeline YAML when it loads it; what the YAML cannot tell (does the data exist and
fill a bucket, do the weight folders exist, is the stage a selected stage starts from exported, are the flags
sane) is checked here, before the work dir, the MLflow store and its runs or a Ray job exist: a failed
pre-flight leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import UserError
from training.checkpoints import export_complete
from training.launch import export_dir_of, resolve_init_from


def check_before_training(pipeline: Any, selected: Sequence[Any], work_dir: Path, workers: int) -> None:
    """Raise the first problem of the `selected` stages (in pipeline order) as a one-line user error."""
    from training.data import StageData

    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    running: set[str] = set()
    for stage in selected:
        if export_complete(export_dir_of(work_dir, pipeline, stage.name)):
            continue  # finished earlier: it will be skipped, its inputs no longer matter
        spec = stage.init_from
        if spec is not None and (spec.path is not None or spec.stage not in running):
            resolve_init_from(pipeline, stage, work_dir)
        for section in ("autoencoder", "text_encoder"):
            path = getattr(stage, section).path
            if path is not None and "://" not in path and not Path(path).exists():
                raise FileNotFoundError(f"stage {stage.name!r}: {section}.path {path} does not exist")
        StageData(stage, 0, 1, stage.seed)  # reads the index: missing, empty or unfit data is an error
        running.add(stage.name)
