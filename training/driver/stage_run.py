"""`StageRun`: one stage of a pipeline, driven from this process as a Ray Train job on the Ray it is connected
to (`orchestration.ray_connect` connects the `svp` commands): plan → prepare → fit → export → record.

- plan: skip when the stage's export is complete and was made from the same inputs (`training.driver.stage_plan`),
  else run or rerun; `force` retrains anyway (the old export and Ray run are set aside, a new MLflow run is
  made).
- prepare: the stage's Ray run `{pipeline}-{stage}-{fingerprint}` under `{work_dir}/ray`, ready to start or
  resume from its latest checkpoint (`training.driver.resume`), with a warning when the disk cannot hold it.
- fit: `workers` DeepSpeed workers (`training.worker.worker`), each given the typed `StageJob`. Worker deaths are
  retried (`FailureConfig(max_failures)`); errors a retry cannot fix stop at once
  (`training.errors.FailFastCallback`). The driver draws rank 0's progress (`training.tracking.progress`), and each
  rank appends its full log to `{work_dir}/logs/{pipeline}/{stage}/rank<N>.log`.
- export: the stage export (universal checkpoint + consolidated weights + EMA) from the final checkpoint.
- record: the export in the stage's MLflow run, which `training.tracking.runs.ending_run` ends FINISHED, FAILED
  or KILLED.

The whole walk holds the stage's lock (`training.driver.stage_lock`): a second driver on the same work dir refuses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import UserError
from training.config.schema import PipelineConfig, StageConfig
from training.driver.disk_budget import warn_if_disk_short
from training.driver.drills import FaultInjection, check_drill_allowed
from training.driver.fingerprints import (
    StageInputs,
    explain_change,
    recall,
    remember,
    set_aside,
    supersede_export,
    write_export_fingerprint,
)
from training.driver.job import StageJob
from training.driver.restore import restore_export, restore_lineage
from training.driver.resume import other_fingerprints, prepare_resume, tqdm_off_if_asked
from training.driver.stage_lock import LOCK_FILE, StageLock
from training.driver.stage_plan import RESTORE, SKIP, StageDecision, decide_stage, export_dir_of, stage_dir
from training.errors import FailFastCallback, StageConfigError, unwrap_training_error
from training.inference.evaluation import evaluate_stage_export
from training.tracking.progress import stage_progress
from training.tracking.runs import (
    TAG_CONFIG,
    TAG_DATASET,
    TAG_INIT_FROM,
    TAG_RAY_NAME,
    TAG_STAGE_FINGERPRINT,
    TAG_THRESHOLDS,
    Tracker,
    ending_run,
    thresholds_hash,
)
from training.worker.checkpoints import clear_staging, export_complete, export_stage, staging_dir
from training.worker.sampling import export_extra

if TYPE_CHECKING:
    from ray.train import Result
    from ray.train.torch import TorchTrainer

log = logging.getLogger("svp.training")

DEFAULT_WORK_DIR = "svp-work"
# Steps between host reads of the step's numbers (MLflow metrics, the progress bar). On a GPU each read waits
# for the queued kernels, so it is not every step; on a CPU there is no queue to drain.
GPU_LOG_EVERY = 10


@dataclass
class StageResult:
    stage: str
    export_dir: Path
    skipped: bool  # the export was already there: nothing ran
    metrics: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None  # of the stage's inputs (training.driver.fingerprints)
    reason: str = ""  # why it was skipped, run or rerun
    checkpoint: str | None = None
    mlflow_run_id: str | None = None
    restored_from: Path | None = (
        None  # a kept export put back instead of training (`training.driver.restore`)
    )


def resolve_work_dir(pipeline: PipelineConfig, work_dir: str | os.PathLike | None) -> Path:
    return Path(work_dir or pipeline.work_dir or DEFAULT_WORK_DIR).resolve()


def ensure_ray(use_gpu: bool) -> None:
    """The connected Ray is used as it is: which cluster to join is decided by the caller
    (`orchestration.ray_connect`), never here."""
    import ray

    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not ray.is_initialized():
        raise RuntimeError(
            "training needs a connected Ray: call orchestration.ray_connect.connect() first (svp commands do)"
        )


@dataclass
class StageRun:
    """One stage's walk from plan to record (see the module docstring). `tracker`/`parent_run_id`: the MLflow
    store and the pipeline's parent run; without `parent_run_id` the run makes or re-attaches the parent run
    and ends it; without `tracker` nothing is tracked."""

    pipeline: PipelineConfig
    stage: StageConfig
    work_dir: Path
    workers: int = 1
    gpus_per_worker: float = 0
    max_failures: int = 3
    force: bool = False
    log_every: int | None = None  # default 1 on CPU workers, GPU_LOG_EVERY on GPUs
    fault: FaultInjection | None = None
    tracker: Tracker | None = None
    parent_run_id: str | None = None
    # Filled in along the walk.
    decision: StageDecision | None = field(default=None, init=False)
    init_from: str | None = field(default=None, init=False)  # the export or file it starts from
    run_id: str | None = field(default=None, init=False)  # the stage's MLflow run

    # -- where everything is ----------------------------------------------------------------------------

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def folder(self) -> Path:
        return stage_dir(self.work_dir, self.pipeline, self.stage.name)

    @property
    def export_dir(self) -> Path:
        return export_dir_of(self.work_dir, self.pipeline, self.stage.name)

    @property
    def lock_path(self) -> Path:
        return self.folder / LOCK_FILE

    @property
    def decided(self) -> StageDecision:
        if self.decision is None:
            raise RuntimeError(f"stage {self.stage.name}: plan() first")
        return self.decision

    @property
    def inputs(self) -> StageInputs:
        inputs = self.decided.inputs
        if inputs is None:
            raise RuntimeError(f"stage {self.stage.name}: its inputs are not known yet")
        return inputs

    @property
    def storage(self) -> Path:
        return self.work_dir / "ray"

    @property
    def ray_name(self) -> str:
        """Keyed by the stage's fingerprint: a checkpoint is only ever resumed by a run of the same inputs."""
        return f"{self.pipeline.name}-{self.stage.name}-{self.inputs.fingerprint}"

    @property
    def run_dir(self) -> Path:
        return self.storage / self.ray_name

    @property
    def logs_dir(self) -> Path:
        """Where each rank of the stage appends its full log, `rank<N>.log` (on the workers' nodes: a work
        dir on shared storage, as the checkpoints need anyway, puts them in one place)."""
        return self.work_dir / "logs" / self.pipeline.name / self.stage.name

    # -- the walk -----------------------------------------------------------------------------------------

    def run(self) -> StageResult:
        """Plan, and unless skipped prepare, fit, export and record, holding the stage's lock throughout."""
        check_drill_allowed(self.fault)
        if self.workers < 1:
            raise UserError(f"--workers must be >= 1, got {self.workers}")
        with StageLock(self.lock_path, self.stage.name):
            decision = self.plan()
            if decision.action == SKIP:
                log.info(f"stage {self.stage.name}: skipped, {decision.reason} ({self.export_dir})")
                return self._result(skipped=True)
            if decision.action == RESTORE:
                return self.restore()
            self.prepare()
            with self._tracked_runs():
                with stage_progress(self.stage.name, self.stage.steps) as board:
                    result = self.fit(asdict(board))
                    self.export(result)
                self.record()
        log.info(f"stage {self.stage.name}: exported to {self.export_dir}")
        uri = self.tracker.tracking_uri if self.tracker else None
        evaluate_stage_export(self.stage, self.export_dir, uri, self.run_id)  # the stage's `eval:` block
        return self._result(skipped=False, result=result)

    def plan(self) -> StageDecision:
        self.decision = decide_stage(self.pipeline, self.stage, self.work_dir, force=self.force)
        return self.decision

    def prepare(self) -> None:
        """What it starts from, a connected Ray, and the stage's Ray run ready to start or resume (and room
        for its checkpoints, or a warning)."""
        decision = self.decided
        log.info(f"stage {self.stage.name}: {decision.action}: {decision.reason}")
        self.init_from = self.resolve_init_from()
        ensure_ray(self.use_gpu)
        warn_if_disk_short(self.stage, self.use_gpu, self.storage, self.export_dir)
        remember(self.folder, self.inputs)
        if self.force and self.run_dir.exists():
            log.info(f"stage {self.stage.name}: forced: earlier Ray run kept at {set_aside(self.run_dir)}")
        self._explain_fresh_start()
        prepare_resume(self.run_dir, self.workers, self.stage.deepspeed.zero_stage)
        clear_staging(staging_dir(self.run_dir))  # saves a killed run never reported (any world size)

    def fit(self, progress: dict[str, str] | None = None) -> Result:
        """Train to the last step; returns Ray's result (its final checkpoint)."""
        from ray.train.v2.api.exceptions import TrainingFailedError

        job = self.job(progress)
        log.info(f"stage {self.stage.name}: workers' logs in {job.logs_dir}")
        try:
            result = self._torch_trainer(job).fit()
        except TrainingFailedError as err:
            raise unwrap_training_error(err) from err
        if result.checkpoint is None:
            raise RuntimeError(
                f"stage {self.stage.name}: training finished without a checkpoint in {self.run_dir}"
            )
        return result

    def export(self, result: Result) -> None:
        """Build the export from the final checkpoint; the fingerprint file, written last, marks it done."""
        superseded = supersede_export(self.export_dir.parent)
        if superseded is not None:
            log.info(f"stage {self.stage.name}: the superseded export is kept at {superseded}")
        started = time.perf_counter()
        extra = {"stage": self.stage.name, "init_from": self.init_from, **export_extra(self.stage)}
        extra["fingerprint"] = self.inputs.fingerprint
        with result.checkpoint.as_directory() as checkpoint_dir, tqdm_off_if_asked():
            export_stage(Path(checkpoint_dir), self.export_dir, self.stage.model_config(), extra)
        write_export_fingerprint(self.export_dir, self.inputs)  # last: only now does the export count
        log.info(f"stage {self.stage.name}: export built in {time.perf_counter() - started:.1f} s")

    def record(self) -> None:
        """The export in the stage's MLflow run (which `_tracked_runs` then ends FINISHED)."""
        if self.tracker is not None and self.run_id is not None:
            self.tracker.log_export(self.run_id, self.export_dir)

    # -- pieces ---------------------------------------------------------------------------------------------

    def resolve_init_from(self) -> str | None:
        """The folder/file the stage initialises from; an unfinished previous stage is an error that says so."""
        spec = self.stage.init_from
        if spec is None:
            return None
        if spec.path is not None:
            path = Path(spec.path)
            if not path.exists():
                raise FileNotFoundError(f"stage {self.stage.name}: init_from.path {path} does not exist")
            return str(path.resolve())
        export = export_dir_of(self.work_dir, self.pipeline, spec.stage)
        if not export_complete(export):
            raise StageConfigError(
                f"stage {self.stage.name}: init_from.stage {spec.stage!r} has no export at {export}; "
                "run that stage first"
            )
        return str(export)

    def job(self, progress: dict[str, str] | None = None) -> StageJob:
        """What every worker of the stage gets."""
        return StageJob(
            pipeline=self.pipeline.name,
            stage=self.stage,
            stage_index=self.pipeline.stage_names.index(self.stage.name),
            init_from=self.init_from,
            tracking_uri=self.tracker.tracking_uri if self.tracker is not None else None,
            mlflow_run_id=self.run_id,
            samples_dir=str(self.folder / "samples"),
            staging_dir=str(staging_dir(self.run_dir)),
            logs_dir=str(self.logs_dir),
            log_every=self.log_every or (GPU_LOG_EVERY if self.use_gpu else 1),
            progress=progress,
            fault=self.fault,
        )

    def _explain_fresh_start(self) -> None:
        """Say why checkpoints of this stage written under another fingerprint are not resumed."""
        prefix = f"{self.pipeline.name}-{self.stage.name}-"
        for folder, old in other_fingerprints(self.storage, prefix, self.inputs.fingerprint):
            why = explain_change(recall(self.folder, old), self.inputs)
            log.warning(
                f"stage {self.stage.name}: not resuming the checkpoints in {folder} (fingerprint {old}, now "
                f"{self.inputs.fingerprint}: {why}); starting afresh"
            )

    @contextlib.contextmanager
    def _tracked_runs(self) -> Iterator[None]:
        """The stage's MLflow run (and the parent run, when this run owns it) for the block, made or
        re-attached, and ended however the block ends."""
        if self.tracker is None:
            yield
            return
        owned_parent = None if self.parent_run_id is not None else self.tracker.parent_run()
        with ending_run(self.tracker, owned_parent):
            self.run_id = self._open_stage_run(self.tracker, self.parent_run_id or owned_parent)
            with ending_run(self.tracker, self.run_id):
                yield

    def _open_stage_run(self, tracker: Tracker, parent_run_id: str) -> str:
        tags = {
            TAG_DATASET: self.inputs.dataset,
            TAG_STAGE_FINGERPRINT: self.inputs.fingerprint,
            TAG_THRESHOLDS: thresholds_hash(self.stage.data),
            TAG_RAY_NAME: self.ray_name,
            TAG_INIT_FROM: self.init_from or "",
            "svp.world_size": str(self.workers),
            "svp.zero_stage": str(self.stage.deepspeed.zero_stage),
            TAG_CONFIG: self.stage.fingerprint(),
        }
        return tracker.stage_run(
            parent_run_id,
            self.stage.name,
            self.pipeline.stage_names.index(self.stage.name),
            params=self.stage.to_flat_params(),
            tags=tags,
            config=self.stage.resolved(),
            run_key=self.ray_name,
            fresh=self.force,
        )

    def _torch_trainer(self, job: StageJob) -> TorchTrainer:
        """The Ray Train job of the stage: `workers` DeepSpeed workers, resumed by its name under storage."""
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from training.worker.worker import train_loop_per_worker

        gpus = {"GPU": self.gpus_per_worker} if self.use_gpu else {}
        return TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"job": job},  # typed: the stage crosses to the workers as its StageConfig
            scaling_config=ScalingConfig(
                num_workers=self.workers, use_gpu=self.use_gpu, resources_per_worker={"CPU": 1, **gpus}
            ),
            torch_config=TorchConfig(backend="nccl" if self.use_gpu else "gloo"),
            run_config=RunConfig(
                name=self.ray_name,
                storage_path=str(self.storage),
                failure_config=FailureConfig(max_failures=self.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=self.stage.checkpoint.keep_last),
                callbacks=[FailFastCallback()],
                worker_runtime_env={} if self.use_gpu else {"env_vars": {"DS_ACCELERATOR": "cpu"}},
            ),
        )

    def restore(self) -> StageResult:
        """The kept export of exactly these inputs put back (`training.driver.restore`), pointing to its MLflow run."""
        kept = self.decided.kept
        superseded = restore_export(self.export_dir, kept)
        if self.tracker is not None:
            parent = self.parent_run_id or self.tracker.parent_run()
            self.run_id = restore_lineage(self.tracker, parent, self.stage.name, self.export_dir, superseded)
        log.info(f"stage {self.stage.name}: restored from {kept} ({self.export_dir})")
        return dataclasses.replace(self._result(skipped=True), restored_from=kept)

    def _result(self, *, skipped: bool, result: Result | None = None) -> StageResult:
        decision = self.decided
        return StageResult(
            self.stage.name,
            self.export_dir,
            skipped=skipped,
            metrics=dict(result.metrics or {}) if result is not None else {},
            fingerprint=decision.fingerprint,
            reason=decision.reason,
            checkpoint=result.checkpoint.path if result is not None else None,
            mlflow_run_id=self.run_id,
        )


def run_stage(
    pipeline: PipelineConfig,
    stage: StageConfig | str,
    workers: int = 1,
    gpus_per_worker: float = 0,
    work_dir: str | os.PathLike | None = None,
    *,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
    max_failures: int = 3,
    fault: FaultInjection | None = None,
    force: bool = False,
    log_every: int | None = None,
) -> StageResult:
    """Train one stage to its last step and export it: `StageRun(...).run()`, with the stage given by name or
    config and the work dir resolved (the given one, else the YAML's, else ./svp-work)."""
    config = pipeline.stage(stage) if isinstance(stage, str) else stage
    return StageRun(
        pipeline,
        config,
        resolve_work_dir(pipeline, work_dir),
        workers,
        gpus_per_worker,
        max_failures=max_failures,
        force=force,
        log_every=log_every,
        fault=fault,
        tracker=tracker,
        parent_run_id=parent_run_id,
    ).run()
