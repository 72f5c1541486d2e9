"""`Trainer`: one Ray Train worker's stage, in named steps: build → restore → (step, checkpoint, sample, evaluate)*
→ close.

`Trainer.from_ray(job)` reads the worker's rank and device from Ray Train; `run()` is the whole stage:

- `build()` makes the model and the DeepSpeed engine; it resumes from `ray.train.get_checkpoint()` when Ray
  hands one over (a restart after a failure, or a rerun of the same command) through `restore()`, else
  initialises the weights from the previous stage's export (`init_from`), and opens the data stream at each
  rank's saved position;
- `step(n)` runs one optimizer step and adds its numbers to the log window, which `log(n)` reads every
  `log_every` steps (the step itself never reads a device value on the host: `training.worker.step.guarded_step`);
- `checkpoint(n)` saves every `checkpoint.every` steps and at the last (Ray Train reports it);
- `sample(n)` renders `stage.sample` every `sample.every` steps, on every rank (see `sample`);
- `evaluate(n)` generates and scores the `eval:` block's videos every `eval.every` steps but the last, the
  prompts and seeds shared between the ranks (`training.worker.live_eval`).

Determinism: every random draw of a step (caption dropout, noise level, noise) comes from a generator seeded
by (seed, rank, step), and the data stream resumes from each rank's saved position, so a stage interrupted
and resumed on the same world size computes exactly the same steps as one that ran straight through.

A step whose loss is NaN/inf on any rank is skipped on every rank (decided on the device by one all-reduce,
so no rank waits in a collective the others skipped) and counted in `train/skipped_steps`.

The export (consolidated weights + EMA) is built by the driver from the final checkpoint
(`training.driver.stage_run`), not here: it needs no worker and must not run once per rank.
"""

from __future__ import annotations

import contextlib
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from training.data.data_metrics import data_metrics
from training.driver.drills import maybe_die
from training.driver.job import StageJob
from training.errors import StageConfigError
from training.inference.evaluation import sample_metrics
from training.tracking.metrics import StepWindow, peak_flops, step_metrics
from training.tracking.progress import BoardAddress, ProgressPublisher
from training.worker.checkpoints import (
    TrainState,
    clear_staging,
    load_checkpoint,
    resume_point,
    save_checkpoint,
)
from training.worker.live_eval import LiveEval, log_live_report
from training.worker.sampling import DEFAULT_FPS, render_sample
from training.worker.step import StageStep, build_engine, guarded_step, step_generator

log = logging.getLogger("svp.training")


class Trainer:
    """One worker's run of one stage (see the module docstring)."""

    def __init__(self, job: StageJob, rank: int, world: int, device: torch.device) -> None:
        if not job.staging_dir:
            raise StageConfigError(
                "StageJob.staging_dir is not set (training.driver.stage_run.StageRun.job sets it)"
            )
        self.job, self.stage, self.rank, self.world, self.device = job, job.stage, rank, world, device
        self.use_gpu = device.type == "cuda"
        self.bf16 = job.stage.deepspeed.bf16_enabled(self.use_gpu)
        self.dtype = torch.bfloat16 if self.bf16 else torch.float32
        self.staging_root = Path(job.staging_dir)
        self.tracker = None
        if rank == 0 and job.mlflow_run_id:
            from training.tracking.runs import RunLogger

            self.tracker = RunLogger(job.tracking_uri, job.mlflow_run_id)
        board = BoardAddress(**job.progress) if rank == 0 and job.progress else None
        self.progress = ProgressPublisher(board)
        self.window = StepWindow(device)
        self.peak = job.peak_flops_per_worker or peak_flops(device, self.bf16)
        self.last_position: Any = None
        self.last_metrics: dict[str, float] = {}
        self.live_eval: LiveEval | None = None  # the `eval:` block during training (`build`)

    @classmethod
    def from_ray(cls, job: StageJob) -> Trainer:
        """The trainer of this Ray Train worker (its rank, world size and device from Ray Train)."""
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        return cls(job, rank, world, ray.train.torch.get_device())

    def run(self) -> None:
        """The stage's steps that are left (all of them on a fresh start)."""
        self.build()
        try:
            for step in range(self.state.step + 1, self.stage.steps + 1):
                self.step(step)
                if self._due(self.stage.checkpoint.every, step, at_end=True):
                    self.checkpoint(step)
                if self.stage.sample and self.job.samples_dir and self._due(self.stage.sample.every, step):
                    self.sample(step)
                if self._eval_due(step):
                    self.evaluate(step)
        finally:
            self.close()

    def _due(self, every: int, step: int, at_end: bool = False) -> bool:
        return step % every == 0 or (at_end and step == self.stage.steps)

    def _eval_due(self, step: int) -> bool:
        return bool(self.live_eval and self.job.samples_dir and self.live_eval.due(step))

    # -- build and restore ------------------------------------------------------------------------------

    def build(self) -> None:
        """Model, engine, EMA, train state and data stream, resumed from Ray's checkpoint when there is one."""
        import ray.train

        from model import LinearDiT

        clear_staging(self.staging_root, self.rank)  # what a killed save of this rank left behind
        self.live_eval = LiveEval.of(self.stage, self.rank, self.world)
        torch.manual_seed(self.stage.seed)  # identical fresh init on every rank
        self.step_math = StageStep(self.stage, self.device, self.dtype)
        model = LinearDiT(self.step_math.model_config)
        checkpoint = ray.train.get_checkpoint()
        with checkpoint.as_directory() if checkpoint else contextlib.nullcontext(None) as checkpoint_dir:
            point = None
            if checkpoint_dir is not None:
                zero = self.stage.deepspeed.zero_stage
                point = resume_point(Path(checkpoint_dir), self.rank, self.world, zero)
            elif self.job.init_from:
                self._init_weights(model)
            universal = bool(point and point.universal)
            self.engine = build_engine(self.stage, model, self.world, self.use_gpu, universal=universal)
            self.ema = None
            if self.stage.ema and self.rank == 0:
                from training.worker.ema import EMA

                self.ema = EMA(self.engine.module, self.stage.ema.decay, self.stage.ema.update_every)
            self.restore(point)
        self._open_data(point)

    def _init_weights(self, model: torch.nn.Module) -> None:
        from training.worker.init_from import init_from_weights

        spec = self.stage.init_from
        report = init_from_weights(
            model,
            Path(self.job.init_from),
            drop_keys=spec.drop_keys,
            reinit_keys=spec.reinit_keys,
            pad_ffn=spec.pad_ffn,
        )
        if self.rank == 0:
            log.info(report.summary())
            if self.tracker:
                self.tracker.log_json(report.to_dict(), "init_from/keys.json")

    def restore(self, point: Any) -> None:
        """The train state: a fresh one, or the checkpoint's (engine, optimizer, EMA, step counters)."""
        zero = self.stage.deepspeed.zero_stage
        self.state = TrainState(0, self.world, zero, mlflow_run_id=self.job.mlflow_run_id)
        self.state.stage_fingerprint = self.stage.fingerprint()
        if point is not None:
            load_started = time.perf_counter()
            load_checkpoint(self.engine, point)
            load_s = time.perf_counter() - load_started
            self.state = point.state
            if self.ema is not None and point.ema_file is not None:
                self.ema.load(point.ema_file)
            if self.rank == 0:
                how = "universal checkpoint" if point.universal else "checkpoint"
                log.info(
                    f"stage {self.stage.name}: resumed from {how} at step {self.state.step} on {self.world}"
                )
                if self.tracker:
                    resumed = {"train/resumed_from_step": self.state.step, "perf/checkpoint_load_s": load_s}
                    self.tracker.log_metrics(resumed, self.state.step)
        self.state.world_size, self.state.zero_stage = self.world, zero

    def _open_data(self, point: Any) -> None:
        from training.data.stage_data import DataPosition, StageData

        try:
            self.data = StageData(self.stage, self.rank, self.world, self.stage.seed)
        except (FileNotFoundError, ValueError) as err:  # missing or unusable data: the same on every retry
            raise StageConfigError(str(err)) from err
        position = None
        if point is not None and point.data_position:
            position = DataPosition.from_dict(point.data_position)
        self.last_position = position
        self.batches = self.data.batches(position)

    # -- the loop's steps -------------------------------------------------------------------------------

    def step(self, step: int) -> None:
        """One optimizer step; its numbers stay on the device until `log` (every `log_every` steps)."""
        if self.job.fault is not None:
            maybe_die(self.job.fault, self.rank, step)
        self.window.start_step()
        start = time.perf_counter()
        try:
            batch = next(self.batches)
        except ValueError as err:  # the data changed under a saved position, or fills no bucket
            raise StageConfigError(f"stage {self.stage.name}: {err}") from err
        data_wait = time.perf_counter() - start
        self.last_position = batch.position
        generator = step_generator(self.stage.seed, self.rank, step)
        self.lr = self.engine.get_lr()[0]  # this step's rate (the scheduler moves on inside engine.step())
        totals, applied = guarded_step(self.engine, self.step_math, batch, generator, data_wait)
        if not applied:
            self.state.skipped_steps += 1
        elif self.ema is not None:
            self.ema.maybe_update(self.engine.module, step)
        self.state.step = step
        self.window.add(totals)
        if self._log_due(step):
            self.log(step)

    def _log_due(self, step: int) -> bool:
        """Every `log_every` steps, and before a checkpoint (it reports the metrics) or a sample (its render
        time is not step time)."""
        sample = self.stage.sample
        return (
            self._due(self.job.log_every, step, at_end=True)
            or self._due(self.stage.checkpoint.every, step)
            or bool(sample and self._due(sample.every, step))
            or self._eval_due(step)
        )

    def log(self, step: int) -> None:
        """Read the log window (one host sync) and log it: MLflow and the driver's progress bar (rank 0)."""
        sums, elapsed = self.window.read()
        self.state.samples_seen += int(sums["samples"])
        grad_norm = self.engine.get_global_grad_norm()
        metrics = step_metrics(sums, self.world, elapsed, self.lr, grad_norm, self.peak)
        metrics["train/skipped_steps"] = self.state.skipped_steps
        self.last_metrics = metrics
        if self.tracker:
            self.tracker.log_metrics(metrics, step)
        self.progress.publish(step, self.stage.steps, metrics)

    def checkpoint(self, step: int) -> None:
        """Save this rank's part and report it to Ray Train (every rank: the data counters are a collective)."""
        stats = data_metrics(self.data.stats)
        if self.tracker and stats:
            self.tracker.log_metrics(stats, step)
        if self.tracker:
            self.tracker.flush()  # batched metrics: what this checkpoint covers is sent before it is saved
        fault = self.job.fault
        save_started = time.perf_counter()
        save_checkpoint(
            self.engine,
            self.state,
            self.rank,
            None if self.last_position is None else self.last_position.to_dict(),
            {"step": step, **self.last_metrics},
            self.ema,
            staging_root=self.staging_root,
            before_report=partial(maybe_die, fault, self.rank, step, "save") if fault else None,
        )
        if self.tracker:  # rank 0's save, Ray's report included (benchmarks/two_gpu_training.py reads it)
            self.tracker.log_metrics({"perf/checkpoint_save_s": time.perf_counter() - save_started}, step)

    def sample(self, step: int) -> None:
        """Render the stage's sample video with the current weights, on every rank; rank 0 writes it.

        Every rank holds the full weights (ZeRO-1/2 partition only the optimizer state and gradients), and the
        render is deterministic, so every rank renders the same video in the same time and all reach the next
        collective together: no rank waits on rank 0's render (at 720p that wait could pass the NCCL timeout).
        The cost is the render time itself, on every rank (`time/sample_s`).
        """
        path = Path(self.job.samples_dir) / f"step{step:08d}.mp4"
        start = time.perf_counter()
        written = render_sample(
            self.stage, self.step_math, self.engine.module, path if self.rank == 0 else None
        )
        seconds = time.perf_counter() - start
        log.info(
            f"stage {self.stage.name}: sample at step {step} rendered in {seconds:.1f} s (rank {self.rank})"
        )
        if self.tracker:
            fps = self.stage.target_fps or DEFAULT_FPS
            self.tracker.log_metrics({"time/sample_s": seconds, **sample_metrics(written, fps)}, step)
            self.tracker.log_artifact(written, "samples")

    def evaluate(self, step: int) -> None:
        """The `eval:` block's videos with the current weights, each rank generating its share; rank 0 writes
        them beside the samples (`<stage>/eval/step<N>/`) and logs `eval/<metric>` at this step."""
        start = time.perf_counter()
        out_root = Path(self.job.samples_dir).parent / "eval"
        report = self.live_eval.run(step, self.engine.module, self.step_math, out_root)
        if report is not None:
            log_live_report(self.tracker, report, time.perf_counter() - start)

    def close(self) -> None:
        if getattr(self, "ema", None) is not None:
            self.ema.close()
        if self.tracker is not None:
            self.tracker.close()  # the last batch, before Ray Train ends this worker
