"""`StageJob`: everything a Ray Train worker needs to run one stage, passed as `train_loop_config`.

Typed: the stage crosses to the workers as its validated `StageConfig` (pickled by Ray), so a worker never
validates it again. Built by `training.driver.stage_run.StageRun.job` on the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from training.config.schema import StageConfig
from training.driver.drills import FaultInjection


@dataclass
class StageJob:
    pipeline: str
    stage: StageConfig
    stage_index: int
    init_from: str | None = None  # export folder or safetensors file, already resolved
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    peak_flops_per_worker: float | None = None  # for MFU; None: not reported
    log_every: int = 1  # steps between host reads of the step's numbers (MLflow, progress bar)
    samples_dir: str | None = None
    logs_dir: str | None = None  # where each rank appends its log (rank<N>.log)
    progress: dict[str, str] | None = (
        None  # training.tracking.progress.BoardAddress of the driver's progress bar
    )
    staging_dir: str | None = None  # where ranks stage checkpoints (training.worker.checkpoints.staging_dir)
    fault: FaultInjection | None = None  # reliability drills only (training.driver.drills)
    extra_tags: dict[str, str] = field(default_factory=dict)
