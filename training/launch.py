"""Run one stage as a Ray Train job: `run_stage(pipeline, stage, workers, gpus_per_worker, work_dir)`, on the
Ray this process is connected to (`orchestration.ray_connect` connects the `svp` commands).

The Ray run is named `{pipeline}-{stage}` under `{work_dir}/ray`, so running the same command again resumes
from the latest checkpoint (Ray Train V2 has no `restore`: the same name and storage path is the resume).
Before launching, the driver looks at that latest checkpoint: if it was written by another world size or
ZeRO stage, it converts it to a universal checkpoint in place, which the workers then load. After `fit()`,
the driver builds the stage export (universal checkpoint + consolidated weights + EMA) from the final
checkpoint and records it in MLflow.

Worker deaths are retried (`FailureConfig(max_failures)`); errors a retry cannot fix stop at once
(`training.errors.FailFastCallback`).

While a stage trains, the driver draws rank 0's progress (`training.progress.stage_progress`), and each rank
appends its full log to `{work_dir}/logs/{pipeline}/{stage}/rank<N>.log` (`worker_logs_dir`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from training.checkpoints import (
    clear_staging,
    convert_to_universal,
    ds_tag,
    export_complete,
    export_stage,
    read_state,
    staging_dir,
)
from training.disk_budget import warn_if_disk_short
from training.drills import FaultInjection, check_drill_allowed
from training.errors import FailFastCallback, StageConfigError, unwrap_training_error
from training.fingerprints import (
    StageInputs,
    explain_change,
    recall,
    remember,
    set_aside,
    supersede_export,
    write_export_fingerprint,
)
from training.job import StageJob
from training.progress import stage_progress
from training.sampling import export_extra
from training.stage_plan import SKIP, decide_stage, export_dir_of, stage_dir
from training.tracking import (
    TAG_CONFIG,
    TAG_DATASET,
    TAG_INIT_FROM,
    TAG_RAY_NAME,
    TAG_STAGE_FINGERPRINT,
    TAG_THRESHOLDS,
    Tracker,
    end_status,
    thresholds_hash,
)

log = logging.getLogger("svp.training")

DEFAULT_WORK_DIR = "svp-work"
# Steps between host reads of the step's numbers (MLflow metrics, the progress bar). On a GPU each read waits
# for the queued kernels, so it is not every step; on a CPU there is no queue to drain.
GPU_LOG_EVERY = 10
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")


@dataclass
class StageResult:
    stage: str
    export_dir: Path
    skipped: bool  # the export was already there: nothing ran
    metrics: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None  # of the stage's inputs (training.fingerprints)
    reason: str = ""  # why it was skipped, run or rerun
    checkpoint: str | None = None
    mlflow_run_id: str | None = None


def resolve_work_dir(pipeline: Any, work_dir: str | os.PathLike | None) -> Path:
    return Path(work_dir or pipeline.work_dir or DEFAULT_WORK_DIR).resolve()


def ray_run_name(pipeline: Any, stage: Any, fingerprint: str) -> str:
    """Keyed by the stage's fingerprint: a checkpoint is only ever resumed by a run of the same inputs."""
    return f"{pipeline.name}-{stage.name}-{fingerprint}"


def _explain_fresh_start(storage: Path, pipeline: Any, stage: Any, inputs: StageInputs) -> None:
    """Say why checkpoints of this stage written under another fingerprint are not resumed."""
    prefix = f"{pipeline.name}-{stage.name}-"
    for folder in sorted(storage.glob(prefix + "*")):
        old = folder.name[len(prefix) :]
        if old == inputs.fingerprint or not _FINGERPRINT.fullmatch(old) or _latest_checkpoint(folder) is None:
            continue
        why = explain_change(recall(stage_dir(storage.parent, pipeline, stage.name), old), inputs)
        log.warning(
            f"stage {stage.name}: not resuming the checkpoints in {folder} (fingerprint {old}, now "
            f"{inputs.fingerprint}: {why}); starting afresh"
        )


def resolve_init_from(pipeline: Any, stage: Any, work_dir: Path) -> str | None:
    """The folder/file a stage initialises from; an unfinished previous stage is an error that says so."""
    spec = stage.init_from
    if spec is None:
        return None
    if spec.path is not None:
        path = Path(spec.path)
        if not path.exists():
            raise FileNotFoundError(f"stage {stage.name}: init_from.path {path} does not exist")
        return str(path.resolve())
    export = export_dir_of(work_dir, pipeline, spec.stage)
    if not export_complete(export):
        raise StageConfigError(
            f"stage {stage.name}: init_from.stage {spec.stage!r} has no export at {export}; run that stage first"
        )
    return str(export)


def worker_logs_dir(work_dir: Path, pipeline: Any, stage: Any) -> Path:
    """Where each rank of a stage appends its full log, `rank<N>.log` (on the workers' nodes: a work dir on
    shared storage, as the checkpoints need anyway, puts them in one place)."""
    return work_dir / "logs" / pipeline.name / stage.name


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


def _latest_checkpoint(run_dir: Path) -> Path | None:
    from ray.train import Result

    if not (run_dir / "checkpoint_manager_snapshot.json").is_file():
        return None
    checkpoint = Result.from_path(str(run_dir)).checkpoint
    return Path(checkpoint.path) if checkpoint is not None else None


def _prepare_resume(run_dir: Path, workers: int, zero_stage: int) -> None:
    """Convert the latest checkpoint to universal when the world size or ZeRO stage changed."""
    latest = _latest_checkpoint(run_dir)
    if latest is None:
        return
    state = read_state(latest)
    if state.world_size != workers or state.zero_stage != zero_stage:
        log.warning(
            f"{latest.name}: written by {state.world_size} workers (ZeRO-{state.zero_stage}), resuming on "
            f"{workers} (ZeRO-{zero_stage}): converting to a universal checkpoint"
        )
        with _tqdm_off_if_asked():
            convert_to_universal(latest / "ds", ds_tag(state.step))


def run_stage(
    pipeline: Any,
    stage: Any,
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
    """Train one stage to its last step and export it (see the module docstring).

    `log_every`: steps between the workers' reads of the step's numbers (MLflow, progress); default 1 on CPU
    workers and GPU_LOG_EVERY on GPUs, where each read waits for the GPU's queued work.

    Skipped when its export is complete and was made from the same inputs (`training.stage_plan`);
    `force` retrains it anyway (the old export and Ray run are set aside, a new MLflow run is made).
    """
    check_drill_allowed(fault)
    if isinstance(stage, str):
        stage = pipeline.stage(stage)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    work_dir = resolve_work_dir(pipeline, work_dir)
    export_dir = export_dir_of(work_dir, pipeline, stage.name)
    decision = decide_stage(pipeline, stage, work_dir, force=force)
    inputs = decision.inputs
    if decision.action == SKIP:
        return _skipped(stage, export_dir, decision)
    log.info(f"stage {stage.name}: {decision.action}: {decision.reason}")
    init_from = resolve_init_from(pipeline, stage, work_dir)
    use_gpu = gpus_per_worker > 0
    ensure_ray(use_gpu)

    name, storage = _prepare_ray_run(pipeline, stage, work_dir, inputs, workers, force, use_gpu)

    owns_parent = tracker is not None and parent_run_id is None  # else the caller ends the parent run
    run_id, parent_run_id = _open_runs(
        tracker, parent_run_id, pipeline, stage, name, init_from, workers, inputs, force
    )
    job = _stage_job(pipeline, stage, work_dir, storage / name, init_from, use_gpu, fault, log_every)
    job.tracking_uri, job.mlflow_run_id = (tracker.tracking_uri if tracker else None), run_id
    log.info(f"stage {stage.name}: workers' logs in {job.logs_dir}")
    try:
        with stage_progress(stage.name, stage.steps) as board:
            job.progress = asdict(board)
            trainer = _torch_trainer(job, stage, workers, gpus_per_worker, name, storage, max_failures)
            result = _fit_and_export(trainer, stage, storage / name, export_dir, init_from, inputs)
    except BaseException as err:  # a failed stage, a Ray error, Ctrl-C, SIGTERM: never leave the runs RUNNING
        if tracker is not None and run_id is not None:
            end_runs_after(tracker, err, run_id, parent_run_id if owns_parent else None)
        raise
    if tracker is not None and run_id is not None:
        _finish_runs(tracker, export_dir, run_id, parent_run_id if owns_parent else None)
    log.info(f"stage {stage.name}: exported to {export_dir}")
    return _trained(stage, export_dir, result, run_id, decision)


def _trained(stage: Any, export_dir: Path, result: Any, run_id: str | None, decision: Any) -> StageResult:
    return StageResult(
        stage.name,
        export_dir,
        skipped=False,
        metrics=dict(result.metrics or {}),
        checkpoint=result.checkpoint.path,
        mlflow_run_id=run_id,
        fingerprint=decision.inputs.fingerprint,
        reason=decision.reason,
    )


def _finish_runs(tracker: Tracker, export_dir: Path, *run_ids: str | None) -> None:
    """The stage's run gets its export recorded; it and the parent (when this call owns it) end FINISHED."""
    tracker.log_export(run_ids[0], export_dir)
    for run_id in run_ids:
        if run_id is not None:
            tracker.finish(run_id)


def _skipped(stage: Any, export_dir: Path, decision: Any) -> StageResult:
    log.info(f"stage {stage.name}: skipped, {decision.reason} ({export_dir})")
    fingerprint = decision.inputs.fingerprint
    return StageResult(stage.name, export_dir, True, fingerprint=fingerprint, reason=decision.reason)


def _open_runs(
    tracker: Tracker | None,
    parent_run_id: str | None,
    pipeline: Any,
    stage: Any,
    name: str,
    init_from: str | None,
    workers: int,
    inputs: StageInputs,
    force: bool,
) -> tuple[str | None, str | None]:
    """(the stage's MLflow child run, the parent run), made or re-attached; (None, parent) without tracking."""
    if tracker is None:
        return None, parent_run_id
    parent_run_id = parent_run_id or tracker.parent_run()
    index = pipeline.stage_names.index(stage.name)
    run_id = _track_stage(tracker, parent_run_id, stage, index, name, init_from, workers, inputs, fresh=force)
    return run_id, parent_run_id


def end_runs_after(tracker: Tracker, error: BaseException, *run_ids: str | None) -> None:
    """End the runs FAILED or KILLED after `error`, without letting a tracking failure (the server away, a
    deleted run) replace the error that stopped the stage: that one is only warned about."""
    for run_id in run_ids:
        if run_id is None:
            continue
        try:
            tracker.finish(run_id, error=error)
        except Exception as tracking_error:
            log.warning(
                f"MLflow: could not end run {run_id} as {end_status(error)} at {tracker.tracking_uri} "
                f"({type(tracking_error).__name__}: {str(tracking_error)[:300]})"
            )


def _prepare_ray_run(
    pipeline: Any, stage: Any, work_dir: Path, inputs: StageInputs, workers: int, force: bool, use_gpu: bool
) -> tuple[str, Path]:
    """The stage's Ray run (name, storage folder), ready to start or resume (and room for its checkpoints,
    or a warning)."""
    warn_if_disk_short(stage, use_gpu, work_dir)
    name = ray_run_name(pipeline, stage, inputs.fingerprint)
    storage = work_dir / "ray"
    remember(stage_dir(work_dir, pipeline, stage.name), inputs)
    if force and (storage / name).exists():
        log.info(f"stage {stage.name}: forced: earlier Ray run kept at {set_aside(storage / name)}")
    _explain_fresh_start(storage, pipeline, stage, inputs)
    _prepare_resume(storage / name, workers, stage.deepspeed.zero_stage)
    clear_staging(staging_dir(storage / name))  # saves a killed run never reported (any world size)
    return name, storage


def _stage_job(
    pipeline: Any,
    stage: Any,
    work_dir: Path,
    run_dir: Path,
    init_from: str | None,
    use_gpu: bool,
    fault: FaultInjection | None,
    log_every: int | None = None,
) -> StageJob:
    """What every worker of the stage gets (tracking and progress are filled in by `run_stage`)."""
    return StageJob(
        pipeline=pipeline.name,
        stage=stage.resolved(),
        stage_index=pipeline.stage_names.index(stage.name),
        init_from=init_from,
        samples_dir=str(stage_dir(work_dir, pipeline, stage.name) / "samples"),
        staging_dir=str(staging_dir(run_dir)),
        logs_dir=str(worker_logs_dir(work_dir, pipeline, stage)),
        log_every=log_every or (GPU_LOG_EVERY if use_gpu else 1),
        fault=fault,
    )


def _torch_trainer(
    job: StageJob,
    stage: Any,
    workers: int,
    gpus_per_worker: float,
    name: str,
    storage: Path,
    max_failures: int,
) -> Any:
    """The Ray Train job of a stage: `workers` DeepSpeed workers, resumed by its name under `storage`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.worker import train_loop_per_worker

    use_gpu = gpus_per_worker > 0
    worker_env = {} if use_gpu else {"env_vars": {"DS_ACCELERATOR": "cpu"}}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": 1, **({"GPU": gpus_per_worker} if use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=stage.checkpoint.keep_last),
            callbacks=[FailFastCallback()],
            worker_runtime_env=worker_env,
        ),
    )


def _fit_and_export(
    trainer: Any, stage: Any, run_dir: Path, export_dir: Path, init_from: str | None, inputs: StageInputs
) -> Any:
    """Train to the last step, then build the export from the final checkpoint; returns Ray's result."""
    from ray.train.v2.api.exceptions import TrainingFailedError

    try:
        result = trainer.fit()
    except TrainingFailedError as err:
        raise unwrap_training_error(err) from err
    if result.checkpoint is None:
        raise RuntimeError(f"stage {stage.name}: training finished without a checkpoint in {run_dir}")
    superseded = supersede_export(export_dir.parent)
    if superseded is not None:
        log.info(f"stage {stage.name}: the superseded export is kept at {superseded}")
    export_started = time.perf_counter()
    with result.checkpoint.as_directory() as checkpoint_dir:
        extra = {"stage": stage.name, "init_from": init_from, **export_extra(stage)}
        extra["fingerprint"] = inputs.fingerprint
        with _tqdm_off_if_asked():
            export_stage(Path(checkpoint_dir), export_dir, stage.model_config(), extra)
    write_export_fingerprint(export_dir, inputs)  # last: only now does the export count as finished
    log.info(f"stage {stage.name}: export built in {time.perf_counter() - export_started:.1f} s")
    return result


def _track_stage(
    tracker: Tracker,
    parent_run_id: str,
    stage: Any,
    stage_index: int,
    ray_name: str,
    init_from: str | None,
    workers: int,
    inputs: StageInputs,
    fresh: bool = False,
) -> str:
    tags = {
        TAG_DATASET: inputs.dataset,
        TAG_STAGE_FINGERPRINT: inputs.fingerprint,
        TAG_THRESHOLDS: thresholds_hash(stage.data),
        TAG_RAY_NAME: ray_name,
        TAG_INIT_FROM: init_from or "",
        "svp.world_size": str(workers),
        "svp.zero_stage": str(stage.deepspeed.zero_stage),
        TAG_CONFIG: stage.fingerprint(),
    }
    return tracker.stage_run(
        parent_run_id,
        stage.name,
        stage_index,
        params=stage.to_flat_params(),
        tags=tags,
        config=stage.resolved(),
        run_key=ray_name,
        fresh=fresh,
    )


@contextlib.contextmanager
def _tqdm_off_if_asked() -> Iterator[None]:
    """With TQDM_DISABLE=1 (the CLI's quiet console), DeepSpeed's bars while a checkpoint is converted or the
    export is built stay off the console: tqdm reads the variable when imported, and this process imported it
    (with torch) before the CLI set it. For this call only: patching tqdm for the whole process broke Ctrl-C
    in Ray Data's bars."""
    import tqdm.std

    if os.environ.get("TQDM_DISABLE") != "1":
        yield
        return
    original = tqdm.std.tqdm.__init__
    tqdm.std.tqdm.__init__ = functools.partialmethod(original, disable=True)
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = original
