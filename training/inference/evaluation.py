"""Evaluation of a stage: videos of fixed prompts and seeds, generated, scored, and recorded.

`generate_and_score` is the one path every evaluation takes: given a model, its autoencoder and text encoder,
the `GenerationOptions` and the (prompt, seed) items (`eval_items`), it generates each video as `svp generate`
does (`model.generate.generate_video`; from an image; or continuing a clip, `model.continuation`), scores it
with `curation.video_eval` (`Scorers`) and writes it as mp4. `evaluate_export` runs it on an export loaded once
(`training.inference.generation.load_export`) and writes `eval.json` (per video and the mean per metric);
`training.worker.live_eval` runs it during training on the live weights (`eval.every`). `log_report` puts the
means in the MLflow run that trained the export (its `stage.json` names it) as `eval/<metric>` at the export's
step, with the videos and the JSON as artifacts under `eval/step<N>/`. `svp eval` and a stage's `eval:` block
(`evaluate_stage_export`, called by the driver once the export is built) share all of it; `score_videos`
scores videos generated elsewhere (the demo's) the same way.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


@dataclass(frozen=True)
class EvalItem:
    """One video of an evaluation: its prompt (and the prompt's index, for the file name) and noise seed."""

    index: int
    prompt: str
    seed: int

    @property
    def name(self) -> str:
        return f"prompt{self.index:02d}-seed{self.seed}"


def eval_items(spec: EvalSpec) -> list[EvalItem]:
    """Every prompt with every seed: the videos one evaluation generates."""
    return [EvalItem(p, prompt, seed) for p, prompt in enumerate(read_prompts(spec)) for seed in spec.seeds]


@dataclass(frozen=True)
class GenerationOptions:
    """How every video of an evaluation is generated (`generation_options`)."""

    num_frames: int  # of a continuation: the new frames
    height: int
    width: int
    fps: float
    steps: int
    guidance_scale: float
    block_frames: int | None = None  # latent frames per block: block-AR as the stage trained
    image: str | None = None  # image-to-video: every video starts from it
    video: str | None = None  # continuation: every video continues this clip


def generation_options(spec: EvalSpec, info: dict, autoencoder: Any) -> GenerationOptions:
    """The options of `spec` for a stage described by `info`: an export's `stage.json`, or during training
    `training.worker.sampling.export_extra(stage)` (the same keys)."""
    from training.inference.generation import _valid_frames

    chunks = info.get("chunk_sizes")
    return GenerationOptions(
        num_frames=_valid_frames(autoencoder, spec.num_frames or _stage_frames(info)),
        height=info["height"],
        width=info["width"],
        fps=float(info["fps"]),
        steps=spec.steps,
        guidance_scale=spec.guidance_scale,
        block_frames=chunks[0] if chunks else None,
        image=spec.image,
        video=spec.video,
    )


def _stage_frames(info: dict) -> int:
    """Frames when the spec names none: a second at the stage's frame rate (at least 2, for the temporal
    metrics)."""
    return max(2, round(float(info["fps"])))


class Scorers:
    """The metric groups that can run with `spec`'s weights; the others are named in `skipped`. Without a
    spec: the weight-free metrics only (`curation.video_eval.frames`)."""

    def __init__(self, spec: EvalSpec | None, fps: float):
        from curation.video_eval import clip_metrics
        from curation.video_eval.clip_metrics import ClipModelSettings

        self.fps, self.clip, self.skipped = fps, None, []
        if spec is None:
            return
        settings = ClipModelSettings(
            clip_model=spec.clip_model, clip_checkpoint=spec.clip_checkpoint, device=spec.device
        )
        self.skipped = [line for line in (clip_metrics.availability(settings),) if line]
        if not self.skipped:
            self.clip = clip_metrics.ClipVideoMetrics(settings, spec.aesthetic_mlp)
            if spec.aesthetic_mlp is None:
                self.skipped.append("aesthetic skipped: no weights configured (eval.aesthetic_mlp)")
        self.skipped.append(clip_metrics.vbench_availability())

    def score(
        self,
        frames: np.ndarray,
        prompt: str,
        image: np.ndarray | None = None,
        clip_end: np.ndarray | None = None,
    ) -> dict[str, float]:
        """The metrics of generated `frames`; `image` is the image they started from, `clip_end` the last
        frame of the clip they continue (`frames` are then only the new ones)."""
        from curation.video_eval.frames import frame_metrics

        out = frame_metrics(frames, self.fps, image, clip_end)
        if self.clip is not None:
            out |= self.clip.score(frames, prompt, image)
        return out


@dataclass(frozen=True)
class _Conditioning:
    """What every video of an evaluation starts from: an image (H, W, 3) or a clip (T, H, W, 3), uint8."""

    image: np.ndarray | None = None
    clip: np.ndarray | None = None
    block_frames: int | None = None  # of a continuation: the stage's block, else the new part in one block

    @classmethod
    def load(cls, options: GenerationOptions, autoencoder: Any) -> _Conditioning:
        from model.conditioning import open_image
        from model.continuation import read_clip

        if options.image is not None:
            return cls(image=np.asarray(open_image(options.image).convert("RGB")))
        if options.video is None:
            return cls()
        block = options.block_frames or math.ceil(options.num_frames / autoencoder.stride[0])
        return cls(clip=read_clip(options.video, autoencoder), block_frames=block)

    @property
    def clip_end(self) -> np.ndarray | None:
        return None if self.clip is None else self.clip[-1]


def generate_and_score(
    model: Any,
    autoencoder: Any,
    text_encoder: Any,
    options: GenerationOptions,
    items: list[EvalItem],
    scorers: Scorers,
    out: Path | None,
) -> list[dict]:
    """The one generation and scoring path of every evaluation (an export's, and during training
    `training.worker.live_eval`'s): per item, a video generated as `svp generate` makes it (from the prompt,
    from `options.image`, or after `options.video`), scored and written as `out/<item>.mp4` — or with `out`
    None kept as mp4 bytes under "mp4" (a rank that sends its videos to rank 0). A continuation's video is
    the clip then the new frames; the new frames only are scored. Returns {prompt, seed, name, metrics, path
    or mp4} per item."""
    from model.video_io import encode_mp4, write_mp4

    conditioning = _Conditioning.load(options, autoencoder)
    videos = []
    for item in items:
        new = _generate_one((model, autoencoder, text_encoder), options, item, conditioning)
        video: dict[str, Any] = {"prompt": item.prompt, "seed": item.seed, "name": item.name}
        video["metrics"] = scorers.score(new, item.prompt, conditioning.image, conditioning.clip_end)
        shown = new if conditioning.clip is None else np.concatenate([conditioning.clip, new])
        if out is None:
            video["mp4"] = encode_mp4(shown, options.fps)
        else:
            video["path"] = str(write_mp4(shown, Path(out) / f"{item.name}.mp4", options.fps))
        videos.append(video)
    return videos


def _generate_one(
    loaded: tuple, options: GenerationOptions, item: EvalItem, conditioning: _Conditioning
) -> np.ndarray:
    """The new frames (T, H, W, 3) uint8 of one item; `loaded` is (model, autoencoder, text encoder)."""
    import torch

    from model.continuation import iter_continuation_blocks
    from model.generate import generate_video

    common = {"steps": options.steps, "guidance_scale": options.guidance_scale, "seed": item.seed}
    if conditioning.clip is not None:
        blocks = iter_continuation_blocks(
            *loaded,
            item.prompt,
            conditioning.clip,
            num_frames=options.num_frames,
            block_frames=conditioning.block_frames,
            **common,
        )
        return torch.cat(list(blocks)).cpu().numpy()
    frames = generate_video(
        *loaded,
        item.prompt,
        num_frames=options.num_frames,
        height=options.height,
        width=options.width,
        block_frames=options.block_frames,
        image=options.image,
        **common,
    )
    return frames.cpu().numpy()


def evaluate_export(
    export_dir: str | Path, spec: EvalSpec, out_dir: str | Path | None = None, ema: bool = False
) -> EvalReport:
    """Generate `spec`'s videos from the export once, score them, write them and `eval.json` to `out_dir`."""
    from curation.video_eval.clip_metrics import resolve_device
    from training.inference.generation import load_export

    info = export_info(export_dir)
    items = eval_items(spec)
    report = EvalReport(
        str(Path(export_dir).resolve()), int(info["step"]), info.get("mlflow_run_id"), ema=ema
    )
    out = Path(out_dir) if out_dir is not None else default_out_dir(export_dir, report.step)
    out.mkdir(parents=True, exist_ok=True)
    scorers = Scorers(spec, float(info["fps"]))
    for line in scorers.skipped:
        log.info(line)
    started = time.perf_counter()
    model, autoencoder, text_encoder, info = load_export(export_dir, ema, str(resolve_device(spec.device)))
    options = generation_options(spec, info, autoencoder)
    videos = generate_and_score(model, autoencoder, text_encoder, options, items, scorers, out)
    return finish_report(report, videos, scorers.skipped, out, time.perf_counter() - started)


def score_videos(export_dir: str | Path, videos: list[dict], out_dir: str | Path) -> EvalReport:
    """Videos generated from the export elsewhere (the demo's), scored with the weight-free metrics as
    `generate_and_score` scores its own, in a report at the export's step for its run (`log_report`). Each
    video: `path`, `prompt`, and `image` (the image it started from) or `clip_frames` (how many of its first
    frames are the clip it continues: the rest is scored, against the clip's last frame)."""
    from model.conditioning import open_image
    from model.video_io import read_frames

    info = export_info(export_dir)
    report = EvalReport(str(Path(export_dir).resolve()), int(info["step"]), info.get("mlflow_run_id"))
    scorers = Scorers(None, float(info["fps"]))
    scored = []
    for video in videos:
        frames, kept = read_frames(video["path"]), int(video.get("clip_frames") or 0)
        image = video.get("image")
        image = None if image is None else np.asarray(open_image(image).convert("RGB"))
        metrics = scorers.score(frames[kept:], video["prompt"], image, frames[kept - 1] if kept else None)
        scored.append(
            {k: str(v) if isinstance(v, Path) else v for k, v in video.items()} | {"metrics": metrics}
        )
    return finish_report(report, scored, scorers.skipped, Path(out_dir))


def finish_report(
    report: EvalReport, videos: list[dict], skipped: list[str], out: Path, seconds: float | None = None
) -> EvalReport:
    """`report` with its videos, their means and `generate_s` (the seconds the generation and scoring took,
    when given), written as `out/eval.json`."""
    report.videos, report.skipped, report.out_dir = videos, list(skipped), str(out)
    report.metrics = _means([v["metrics"] for v in videos])
    if seconds is not None:
        report.metrics["generate_s"] = seconds
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    return report


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
