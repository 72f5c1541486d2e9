"""Evaluation of a stage export: videos of fixed prompts and seeds, generated once, scored, and recorded.

`evaluate_export` loads the export once (`training.inference.generation.load_export`), generates one video per prompt
and seed with `model.generate.generate_video` (as `svp generate` does), writes each as mp4, scores it with
`curation.video_eval` and writes `eval.json` (per video and the mean per metric). `log_report` puts the means
in the MLflow run that trained the export (its `stage.json` names it) as `eval/<metric>` at the export's step,
with the videos and the JSON as artifacts under `eval/step<N>/`. `svp eval` and a stage's `eval:` block
(`evaluate_stage_export`, called by the driver once the export is built) share all of it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.errors import UserError
from training.config.schema import EvalSpec
from training.worker.checkpoints import EXPORT_STATE_FILE

if TYPE_CHECKING:
    from training.config.schema import StageConfig

log = logging.getLogger("svp.training")

METRIC_PREFIX = "eval/"
REPORT_FILE = "eval.json"


@dataclass
class EvalReport:
    """What one evaluation of one export found: the mean of each metric over its videos, and each video."""

    export: str
    step: int
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    videos: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line per metric group that could not run
    ema: bool = False  # scored with the export's EMA weights
    out_dir: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def read_prompts(spec: EvalSpec) -> list[str]:
    """The spec's prompts, then its prompts file's lines (blank lines and `#` comments skipped)."""
    prompts = list(spec.prompts)
    if spec.prompts_file is not None:
        path = Path(spec.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file not found: {path}")
        lines = (line.strip() for line in path.read_text().splitlines())
        prompts += [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise UserError(f"no prompts to evaluate (the prompts file {spec.prompts_file} has none)")
    return prompts


def export_info(export_dir: str | Path) -> dict:
    info_file = Path(export_dir) / EXPORT_STATE_FILE
    if not info_file.is_file():
        raise FileNotFoundError(f"{export_dir} is not a stage export (no {EXPORT_STATE_FILE})")
    return json.loads(info_file.read_text())


def default_out_dir(export_dir: str | Path, step: int) -> Path:
    """Beside the export, never inside it (an export's files are fingerprinted)."""
    export_dir = Path(export_dir).resolve()
    return export_dir.parent / "eval" / f"{export_dir.name}-step{step:08d}"


class _Scorers:
    """The metric groups that can run with `spec`'s weights; the others are named in `skipped`."""

    def __init__(self, spec: EvalSpec, fps: float):
        from curation.video_eval import clip_metrics
        from curation.video_eval.clip_metrics import ClipModelSettings

        self.fps, self.clip = fps, None
        settings = ClipModelSettings(
            clip_model=spec.clip_model, clip_checkpoint=spec.clip_checkpoint, device=spec.device
        )
        self.skipped = [line for line in (clip_metrics.availability(settings),) if line]
        if not self.skipped:
            self.clip = clip_metrics.ClipVideoMetrics(settings, spec.aesthetic_mlp)
            if spec.aesthetic_mlp is None:
                self.skipped.append("aesthetic skipped: no weights configured (eval.aesthetic_mlp)")
        self.skipped.append(clip_metrics.vbench_availability())

    def score(self, frames: np.ndarray, prompt: str, image: np.ndarray | None) -> dict[str, float]:
        from curation.video_eval.frames import frame_metrics

        out = frame_metrics(frames, self.fps, image)
        if self.clip is not None:
            out |= self.clip.score(frames, prompt, image)
        return out


def evaluate_export(
    export_dir: str | Path, spec: EvalSpec, out_dir: str | Path | None = None, ema: bool = False
) -> EvalReport:
    """Generate `spec`'s videos from the export once, score them, write them and `eval.json` to `out_dir`."""
    from curation.video_eval.clip_metrics import resolve_device

    info = export_info(export_dir)
    prompts = read_prompts(spec)
    device = str(resolve_device(spec.device))
    report = EvalReport(
        str(Path(export_dir).resolve()), int(info["step"]), info.get("mlflow_run_id"), ema=ema
    )
    out = Path(out_dir) if out_dir is not None else default_out_dir(export_dir, report.step)
    out.mkdir(parents=True, exist_ok=True)
    report.out_dir = str(out)
    scorers = _Scorers(spec, float(info["fps"]))
    report.skipped = scorers.skipped
    for line in report.skipped:
        log.info(line)
    started = time.perf_counter()
    for video in _generate(export_dir, spec, prompts, out, device, ema):
        video["metrics"] = scorers.score(video.pop("frames"), video["prompt"], video.pop("image"))
        report.videos.append(video)
    report.metrics = _means([v["metrics"] for v in report.videos])
    report.metrics["generate_s"] = time.perf_counter() - started
    (out / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    return report


def _generate(
    export_dir: str | Path, spec: EvalSpec, prompts: list[str], out: Path, device: str, ema: bool
) -> Iterator[dict]:
    """Per prompt and seed: {prompt, seed, path, frames, image}; the model is loaded once for all of them."""
    from model.conditioning import open_image
    from model.generate import generate_video, save_video
    from training.inference.generation import _valid_frames, load_export

    model, autoencoder, text_encoder, info = load_export(export_dir, ema, device)
    chunks = info.get("chunk_sizes")
    options = {
        "num_frames": _valid_frames(autoencoder, spec.num_frames or _stage_frames(info)),
        "height": info["height"],
        "width": info["width"],
        "steps": spec.steps,
        "guidance_scale": spec.guidance_scale,
        "block_frames": chunks[0] if chunks else None,
        "image": spec.image,
    }
    image = np.asarray(open_image(spec.image).convert("RGB")) if spec.image else None
    for p, prompt in enumerate(prompts):
        for seed in spec.seeds:
            frames = generate_video(model, autoencoder, text_encoder, prompt, seed=seed, **options)
            path = save_video(frames, out / f"prompt{p:02d}-seed{seed}.mp4", fps=float(info["fps"]))
            yield {
                "prompt": prompt,
                "seed": seed,
                "path": str(path),
                "frames": frames.cpu().numpy(),
                "image": image,
            }


def _stage_frames(info: dict) -> int:
    """Frames when the spec names none: a second at the stage's frame rate (at least 2, for the temporal
    metrics)."""
    return max(2, round(float(info["fps"])))


def _means(per_video: list[dict[str, float]]) -> dict[str, float]:
    names = sorted(set().union(*per_video)) if per_video else []
    return {n: float(np.mean([m[n] for m in per_video if n in m])) for n in names}


def sample_metrics(path: str | Path, fps: float) -> dict[str, float]:
    """The weight-free metrics of a sample video the trainer rendered, as `sample/<metric>`: curves over the
    steps at `sample.every`, for the cost of reading one small mp4 (the eval prompts are only generated at
    export)."""
    from curation.video_eval.frames import frame_metrics
    from model.video_io import read_frames

    return {f"sample/{k}": v for k, v in frame_metrics(read_frames(path), fps).items()}


def tracking_uri_for_export(export_dir: str | Path) -> str | None:
    """The store the export's stage was tracked in: MLFLOW_TRACKING_URI, else the `mlflow.db` of the work
    dir above the export; None when there is neither."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    for folder in Path(export_dir).resolve().parents:
        if (folder / "mlflow.db").is_file():
            return f"sqlite:///{folder / 'mlflow.db'}"
    return None


def log_report(report: EvalReport, tracking_uri: str) -> None:
    """The report's means as `eval/<metric>` at the export's step in its run, videos and JSON as artifacts."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    if report.run_id is None:
        raise UserError(f"{report.export}: its stage.json names no MLflow run (trained without tracking)")
    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    metrics = [
        Metric(METRIC_PREFIX + k, v, now, report.step) for k, v in report.metrics.items() if np.isfinite(v)
    ]
    client.log_batch(report.run_id, metrics=metrics)
    folder = f"eval/step{report.step:08d}"
    for video in report.videos:
        client.log_artifact(report.run_id, video["path"], folder)
    client.log_artifact(report.run_id, str(Path(report.out_dir) / REPORT_FILE), folder)


def evaluate_stage_export(
    stage: StageConfig, export_dir: Path, tracking_uri: str | None, run_id: str | None
) -> None:
    """A stage's `eval:` block, run by the driver once the export is built. The stage is already trained
    and exported: a failing evaluation is logged as a warning, never raised (the export stays good)."""
    if stage.eval is None:
        return
    try:
        report = evaluate_export(export_dir, stage.eval)
        report.run_id = run_id or report.run_id
        if tracking_uri is not None and report.run_id is not None:
            log_report(report, tracking_uri)
        summary = ", ".join(f"{k} {v:.4g}" for k, v in report.metrics.items())
        log.info(f"stage {stage.name}: eval at step {report.step}: {summary} ({report.out_dir})")
    except Exception as err:
        log.warning(f"stage {stage.name}: eval failed, the export is kept: {type(err).__name__}: {err}")
