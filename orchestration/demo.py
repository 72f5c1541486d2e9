"""`svp demo`: the whole platform on one machine, in minutes, with no weights.

synthetic raw videos (with broken files) → curation (Ray Data) → the four tiny training stages (Ray Train +
DeepSpeed, MLflow) → a long video generated block by block from the last stage. Every step is the same code a
real run uses; only the sizes and the weight-free backends are small. Rerunning the command resumes: finished
sources, stages and the corpus are not redone.

The corpus is the synthetic "shapes" scene (a moving square or disc on a flat background, captioned with what
it shows) and the tiny stages get demo settings (`DEMO_OVERRIDES`) so that the model visibly learns in the
demo's few minutes; `orchestration.demo_check` measures that it did. The generated videos are scored as any
evaluation scores its own (`training.inference.evaluation`) and the scores logged to the last stage's MLflow
run as `eval/<metric>` (`svp runs list`, the experiments page).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_PROMPT = "a red square moving right on blue"
DEMO_SCENE = "shapes"
# The tiny preset's model has a 64-wide residual stream, but each token carries 192 values (8x8 pixels x 3).
# The demo's is 256 wide and predicts the clean sample (`prediction: sample`, JiT): asked for the velocity,
# a model this small must reproduce every value of each token's noise, and after the demo's few hundred
# steps its videos kept per-pixel grain that changed from frame to frame (18.8 levels against the clips'
# 2.7); asked for x0, which is flat colour and one shape here, they are smooth. The velocity loss of an x0
# model weighs a frame by 1/σ², so the block-AR stage draws each chunk's noise level on its own (`uniform`)
# rather than the preset's `incremental`, whose first chunks sit near σ = 0 and swamp the gradient.
# The image stage's steps are cheap (16 tokens), so it takes larger batches and most of the steps.
DEMO_MODEL = {
    "num_heads": 4,
    "head_dim": 64,
    "cross_attention_heads": 4,
    "cross_attention_head_dim": 64,
    "prediction": "sample",
}
DEMO_STEPS = {"image": 200, "video": 40, "video-hires": 120, "long-video-ar": 90}
DEMO_OVERRIDES: dict[str, object] = {
    **{f"defaults.model.overrides.{key}": value for key, value in DEMO_MODEL.items()},
    "defaults.optimizer.lr": 3.0e-3,
    "defaults.optimizer.warmup_steps": 10,
    "defaults.checkpoint.every": 50,
    "stages.image.buckets": [{"height": 32, "width": 32, "num_frames": 1, "batch_size": 8}],
    "stages.long-video-ar.chunk_sigma_strategy": "uniform",
    **{f"stages.{stage}.steps": steps for stage, steps in DEMO_STEPS.items()},
    **{f"stages.{stage}.sample.every": steps for stage, steps in DEMO_STEPS.items()},
}
# The generated video: sampler steps per block and guidance that suit a model this small.
DEMO_SAMPLER = {"steps": 12, "guidance_scale": 1.0}


@dataclass(frozen=True)
class DemoResult:
    raw: Path  # the synthetic corpus (OUT/raw/videos + ground_truth.json)
    curated: Path  # the curation output folder (sources/clips parquet, shards, report)
    work_dir: Path  # checkpoints, stage exports, MLflow store (mlflow.db + mlartifacts)
    video: Path  # the generated long video
    report: dict
    figures: dict  # orchestration.demo_check.learning_figures: generated vs training statistics, loss curve
    samples: dict  # training.inference.generation.write_conditioning_samples (start_image, image_to_video, continued)
    clip: Path  # the training clip the prompt is the caption of, which the samples start from


def run_demo(
    out: str | os.PathLike,
    *,
    videos: int = 6,
    workers: int = 2,
    steps: int | None = None,
    seconds: float = 4.0,
    address: str | None = None,
) -> DemoResult:
    """Run synth → curate → train (tiny preset, 4 stages) → generate under `out`."""
    from curation.config import load_config
    from curation.pipeline import run_curation
    from curation.synth import VIDEOS_DIR, make_corpus
    from orchestration.console import ray_log_dir
    from orchestration.ray_connect import ray_connection
    from training.config import load_preset
    from training.driver.pipeline import run_pipeline

    out = Path(out)
    raw, curated, work_dir = out / "raw", out / "curated", out / "runs"
    log.info("[1/4] synthetic corpus: %s", raw)
    if not (raw / "ground_truth.json").is_file():
        make_corpus(raw, videos, scene=DEMO_SCENE)
    overrides = {**DEMO_OVERRIDES, **({"stages.*.steps": steps} if steps else {})}
    pipeline = load_preset("tiny", variables={"data_root": str(curated)}, overrides=overrides)

    # One Ray for the whole demo: curation and every training stage use it.
    with ray_connection(address):
        log.info("    Ray workers' logs: %s", ray_log_dir())
        log.info("[2/4] curation: %s", curated)
        report = run_curation(str(raw / VIDEOS_DIR), curated, load_config(None))
        log.info("[3/4] training, %d stages: %s", len(pipeline.stages), work_dir)
        results = run_pipeline(pipeline, workers=workers, work_dir=work_dir)
    log.info("[4/4] generation: %s", out / "demo.mp4")
    video, samples, clip, figures = _generate(out, pipeline, results[-1].export_dir, work_dir, seconds)
    return DemoResult(raw, curated, work_dir, video, report, figures, samples, clip)


def _generate(
    out: Path, pipeline, export_dir: Path, work_dir: Path, seconds: float
) -> tuple[Path, dict, Path, dict]:
    """(video, samples, clip, figures): the long video from a prompt, the two conditioned samples, the training
    clip they start from, and the figures that say what was learned.

    The prompt is the caption of a clip the last stage trained on, and that clip starts the two conditioned
    tasks the video stages train (image_condition_prob): a video from its first frame, and the clip continued
    through the constant-memory cache. Unlike a prompt, a first frame says where the shape is."""
    from model.video_io import write_mp4
    from orchestration.demo_check import learning_figures, showcase, training_clips
    from training.inference.generation import generate_from_export, write_conditioning_samples
    from training.tracking.runs import resolve_tracking_uri

    stage = pipeline.stages[-1]
    clips = training_clips(stage)
    prompt, clip = showcase(clips)
    prompt = prompt or DEMO_PROMPT
    log.info("    prompt: %r", prompt)
    video = generate_from_export(
        export_dir, prompt, seconds, out / "demo.mp4", block_frames=4, **DEMO_SAMPLER
    )
    clip_path = write_mp4(clip, out / "samples" / "clip.mp4", stage.target_fps)
    samples = write_conditioning_samples(
        export_dir,
        out / "samples",
        prompt,
        clip_path,
        seconds=len(clip) / stage.target_fps,
        block_frames=4,
        **DEMO_SAMPLER,
    )
    uri = resolve_tracking_uri(work_dir.resolve())
    report = _evaluate(export_dir, out / "eval", prompt, video, samples, uri)
    names = ("generated", "image_to_video")
    png = out / "demo_frames.png"
    figures = learning_figures(report, names, prompt, clips, uri, pipeline.name, png, stage.target_fps)
    return video, samples, clip_path, figures


def _evaluate(export_dir: Path, out: Path, prompt: str, video: Path, samples: dict, tracking_uri: str):
    """The demo's three videos scored as any evaluation scores its own (`training.inference.evaluation`:
    flicker, motion, sanity; the image-to-video one against its image, the continued one against the end of
    its clip) and logged to the last stage's MLflow run as `eval/<metric>` at its export's step, so they show
    in `svp runs list/compare` and on the experiments page like any evaluation. Returns the report."""
    from training.inference.evaluation import log_report, score_videos

    continued = samples["continued"]
    kept = json.loads(Path(continued).with_suffix(".json").read_text())["frames_kept"]
    image_to_video = {"path": samples["image_to_video"], "image": samples["start_image"]}
    videos = [
        {"name": "generated", "path": video, "prompt": prompt},
        {"name": "image_to_video", "prompt": prompt, **image_to_video},
        {"name": "continued", "path": continued, "prompt": prompt, "clip_frames": kept},
    ]
    report = score_videos(export_dir, videos, out)
    if report.run_id is not None:
        log_report(report, tracking_uri)
    log.info("    eval: %s (%s)", ", ".join(f"{k} {v:.3g}" for k, v in report.metrics.items()), out)
    return report
