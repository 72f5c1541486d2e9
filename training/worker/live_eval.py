"""`eval.every`: a stage's `eval:` videos generated and scored during training, with the live weights.

At every step that is a multiple of `eval.every` but not the last (the export's evaluation on the driver covers
that one), every rank generates its share of the block's prompts × seeds — rank r takes items r, r + world, … —
through `training.inference.evaluation.generate_and_score`, the path an export's evaluation takes, with the
training module (`training.worker.sampling.inference_mode`: eval mode, autocast for bf16 weights). Every
rank holds the full weights (ZeRO-1/2 partition only the optimizer state and gradients).

The shares meet in one `torch.distributed.all_gather_object` (the per-video metrics, and the videos as mp4
bytes), which every rank reaches whatever its share — a rank whose generation fails sends its error instead,
so no rank waits in a collective another skipped. Rank 0 writes the videos and `eval.json` to
`<stage>/eval/step<N>/`, logs the means as `eval/<metric>` at the step (with `time/eval_s`) and the files as
artifacts under `eval/step<N>/`; an error is a warning and the training goes on, as a failing evaluation of
an export leaves the export.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_bytes
from core.errors import UserError
from training.errors import StageConfigError
from training.inference.evaluation import (
    METRIC_PREFIX,
    REPORT_FILE,
    EvalReport,
    Scorers,
    eval_items,
    finish_report,
    generate_and_score,
    generation_options,
)
from training.worker.sampling import export_extra, inference_mode

log = logging.getLogger("svp.training")


class LiveEval:
    """The stage's `eval:` block as run by one rank during training (see the module docstring)."""

    def __init__(self, stage: Any, rank: int, world: int) -> None:
        self.stage, self.spec, self.rank, self.world = stage, stage.eval, rank, world
        try:  # a missing prompts file fails the stage at its start, not at the first evaluation
            self.items = eval_items(self.spec)
        except (OSError, UserError) as err:
            raise StageConfigError(f"stage {stage.name}: eval: {err}") from err
        self.info = export_extra(stage)
        self.scorers = Scorers(self.spec, float(self.info["fps"]))

    @classmethod
    def of(cls, stage: Any, rank: int, world: int) -> LiveEval | None:
        """The stage's evaluation during training, or None when its `eval:` block has no `every`."""
        return cls(stage, rank, world) if stage.eval is not None and stage.eval.every else None

    def due(self, step: int) -> bool:
        return step % self.spec.every == 0 and step != self.stage.steps

    def run(self, step: int, module: Any, step_math: Any, out_root: Path) -> EvalReport | None:
        """Generate and score this rank's share and gather every rank's (every rank calls it); rank 0 gets
        the report, its files written under `out_root/step<N>/`; the other ranks get None."""
        started = time.perf_counter()
        out = out_root / f"step{step:08d}" if self.rank == 0 else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        parts = _all_gather(self._share(module, step_math, out), self.world)
        if self.rank != 0:
            return None
        return self._report(step, parts, out, time.perf_counter() - started)

    def _share(self, module: Any, step_math: Any, out: Path | None) -> dict:
        """This rank's videos (rank 0's written to `out`, the others' as mp4 bytes), or its error."""
        mine = self.items[self.rank :: self.world]
        try:
            options = generation_options(self.spec, self.info, step_math.autoencoder)
            loaded = (module, step_math.autoencoder, step_math.text_encoder)
            with inference_mode(module):
                videos = generate_and_score(*loaded, options, mine, self.scorers, out)
        except Exception as err:  # sent instead of videos: every rank still reaches the gather
            return {"rank": self.rank, "error": f"{type(err).__name__}: {err}"}
        return {"rank": self.rank, "videos": videos}

    def _report(self, step: int, parts: list[dict], out: Path, seconds: float) -> EvalReport:
        errors = [f"eval failed on rank {p['rank']}: {p['error']}" for p in parts if "error" in p]
        order = {item.name: i for i, item in enumerate(self.items)}
        videos = sorted((v for p in parts for v in p.get("videos", [])), key=lambda v: order[v["name"]])
        for video in videos:
            data = video.pop("mp4", None)
            if data is not None:  # another rank's video
                video["path"] = str(atomic_write_bytes(out / f"{video['name']}.mp4", data))
        for line in errors:
            log.warning(f"stage {self.stage.name}: step {step}: {line}; the training goes on")
        report = EvalReport(f"{self.stage.name} (training)", step, None)
        return finish_report(report, videos, [*self.scorers.skipped, *errors], out, seconds)


def _all_gather(part: dict, world: int) -> list[dict]:
    """Every rank's part, on every rank (just this one's outside a process group)."""
    import torch.distributed as dist

    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return [part]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return parts


def log_live_report(tracker: Any, report: EvalReport, seconds: float) -> None:
    """Rank 0: the means as `eval/<metric>` at the report's step, the videos and `eval.json` as artifacts
    under `eval/step<N>/` (as `training.inference.evaluation.log_report` logs an export's)."""
    summary = ", ".join(f"{k} {v:.4g}" for k, v in report.metrics.items())
    log.info(f"eval at step {report.step}: {summary} ({report.out_dir})")
    if tracker is None:
        return
    metrics = {METRIC_PREFIX + k: v for k, v in report.metrics.items() if math.isfinite(v)}
    tracker.log_metrics({**metrics, "time/eval_s": seconds}, report.step)
    folder = f"eval/step{report.step:08d}"
    for video in report.videos:
        tracker.log_artifact(Path(video["path"]), folder)
    tracker.log_artifact(Path(report.out_dir) / REPORT_FILE, folder)
