"""`StageJob`: everything a Ray Train worker needs to run one stage, passed as `train_loop_config`.

Plain JSON-safe data (the stage config as its resolved dict), so it crosses Ray's serialisation unchanged and
is logged as-is. Built by `training.launch.run_stage` on the driver.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from training.drills import FaultInjection


@dataclass
class StageJob:
    pipeline: str
    stage: dict[str, Any]  # StageConfig.resolved()
    stage_index: int
    init_from: str | None = None  # export folder or safetensors file, already resolved
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    peak_flops_per_worker: float | None = None  # for MFU; None: not reported
    log_every: int = 1  # steps between host reads of the step's numbers (MLflow, progress bar)
    samples_dir: str | None = None
    logs_dir: str | None = None  # where each rank appends its log (rank<N>.log)
    progress: dict[str, str] | None = None  # training.progress.BoardAddress of the driver's progress bar
    staging_dir: str | None = None  # where ranks stage checkpoints (training.checkpoints.staging_dir)
    fault: FaultInjection | None = None  # reliability drills only (training.drills)
    extra_tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageJob:
        values = dict(data)
        if values.get("fault"):
            values["fault"] = FaultInjection(**values["fault"])
        return cls(**values)
