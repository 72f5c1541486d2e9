"""The Ray Train worker loop of one stage: DeepSpeed inside, flow-matching loss, checkpoints, rank-0 MLflow.

One call of `train_loop_per_worker` per worker process. It resumes from `ray.train.get_checkpoint()` when Ray
hands one over (a restart after a failure, or a rerun of the same command), else initialises weights from
the previous stage's export (`init_from`), then runs the steps that are left.

Determinism: every random draw of a step (caption dropout, noise level, noise) comes from a generator seeded
by (seed, rank, step), and the data stream resumes from each rank's saved position, so a stage interrupted
and resumed on the same world size computes exactly the same steps as one that ran straight through.

A step whose loss is NaN/inf on any rank is skipped on every rank (one all-reduce decides, so no rank waits
in a collective the others skipped) and counted in `train/skipped_steps`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from training.checkpoints import (
    TrainState,
    clear_staging,
    load_checkpoint,
    resume_point,
    save_checkpoint,
)
from training.data_metrics import data_metrics
from training.drills import maybe_die
from training.errors import StageConfigError
from training.job import StageJob
from training.metrics import peak_flops, step_metrics
from training.sampling import render_sample
from training.step import StageStep, build_engine, guarded_step, step_generator

log = logging.getLogger("svp.training")


def train_loop_per_worker(job_dict: dict[str, Any]) -> None:
    """Ray Train entry point (see the module docstring)."""
    import ray.train
    import ray.train.torch
    from pydantic import TypeAdapter

    from model import LinearDiT
    from training.config import StageConfig
    from training.data import DataPosition, StageData
    from training.ema import EMA
    from training.init_from import init_from_weights
    from training.tracking import RunLogger

    job = StageJob.from_dict(job_dict)
    stage = TypeAdapter(StageConfig).validate_python(job.stage)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    use_gpu = device.type == "cuda"
    bf16 = stage.deepspeed.bf16_enabled(use_gpu)
    dtype = torch.bfloat16 if bf16 else torch.float32
    tracker = RunLogger(job.tracking_uri, job.mlflow_run_id) if rank == 0 and job.mlflow_run_id else None
    if not job.staging_dir:
        raise StageConfigError("StageJob.staging_dir is not set (training.launch.run_stage sets it)")
    staging_root = Path(job.staging_dir)
    clear_staging(staging_root, rank)  # what a killed save of this rank left behind

    torch.manual_seed(stage.seed)  # identical fresh init on every rank
    step_math = StageStep(stage, device, dtype)
    model = LinearDiT(step_math.model_config)
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext(None) as checkpoint_dir:
        point = None
        if checkpoint_dir is not None:
            point = resume_point(Path(checkpoint_dir), rank, world, stage.deepspeed.zero_stage)
        elif job.init_from:
            report = init_from_weights(
                model,
                Path(job.init_from),
                drop_keys=stage.init_from.drop_keys,
                reinit_keys=stage.init_from.reinit_keys,
                pad_ffn=stage.init_from.pad_ffn,
            )
            if rank == 0:
                log.info(report.summary())
                if tracker:
                    tracker.log_json(report.to_dict(), "init_from/keys.json")
        engine = build_engine(stage, model, world, use_gpu, universal=bool(point and point.universal))
        ema = EMA(engine.module, stage.ema.decay, stage.ema.update_every) if stage.ema and rank == 0 else None
        state = TrainState(0, world, stage.deepspeed.zero_stage, mlflow_run_id=job.mlflow_run_id)
        state.stage_fingerprint = stage.fingerprint()
        if point is not None:
            load_checkpoint(engine, point)
            state = point.state
            if ema is not None and point.ema_file is not None:
                ema.load(point.ema_file)
            if rank == 0:
                how = "universal checkpoint" if point.universal else "checkpoint"
                log.info(f"stage {stage.name}: resumed from {how} at step {state.step} on {world} workers")
                if tracker:
                    tracker.log_metrics({"train/resumed_from_step": state.step}, state.step)
    try:
        data = StageData(stage, rank, world, stage.seed)
    except (FileNotFoundError, ValueError) as err:  # missing or unusable data: the same on every retry
        raise StageConfigError(str(err)) from err
    position = None
    if point is not None and point.data_position:
        position = DataPosition.from_dict(point.data_position)
    batches = data.batches(position)
    state.world_size, state.zero_stage = world, stage.deepspeed.zero_stage
    peak = job.peak_flops_per_worker or peak_flops(device, bf16)

    last_position = position
    for step in range(state.step + 1, stage.steps + 1):
        if job.fault is not None:
            maybe_die(job.fault, rank, step)
        start = time.perf_counter()
        try:
            batch = next(batches)
        except ValueError as err:  # the data changed under a saved position, or fills no bucket
            raise StageConfigError(f"stage {stage.name}: {err}") from err
        data_wait = time.perf_counter() - start
        last_position = batch.position
        generator = step_generator(stage.seed, rank, step)
        lr = engine.get_lr()[0]  # the rate this step uses (the scheduler moves on inside engine.step())
        totals, applied = guarded_step(engine, step_math, batch, generator, data_wait)
        if not applied:
            state.skipped_steps += 1
        elif ema is not None:
            ema.maybe_update(engine.module, step)
        state.step = step
        state.samples_seen += int(totals.samples)
        if use_gpu:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        metrics = step_metrics(totals, world, elapsed, lr, engine.get_global_grad_norm(), peak)
        metrics["train/skipped_steps"] = state.skipped_steps
        if tracker and (step % job.log_every == 0 or step == stage.steps):
            tracker.log_metrics(metrics, step)
        if step % stage.checkpoint.every == 0 or step == stage.steps:
            stats = data_metrics(data.stats)  # every rank takes part (a collective)
            if tracker and stats:
                tracker.log_metrics(stats, step)
            save_checkpoint(
                engine,
                state,
                rank,
                _position_dict(last_position),
                {"step": step, **metrics},
                ema,
                staging_root=staging_root,
                before_report=partial(maybe_die, job.fault, rank, step, "save") if job.fault else None,
            )
        if stage.sample and rank == 0 and job.samples_dir and step % stage.sample.every == 0:
            sample = render_sample(
                stage, step_math, engine.module, Path(job.samples_dir) / f"step{step:08d}.mp4"
            )
            if tracker:
                tracker.log_artifact(sample, "samples")
    if ema is not None:
        ema.close()


def _position_dict(position: Any) -> dict[str, Any] | None:
    return None if position is None else position.to_dict()
