"""Did the demo's model learn? Its videos' statistics next to those of the clips it trained on.

A model that learned nothing turns noise into noise: per-pixel colours unrelated from one frame to the next
(mean absolute difference of consecutive frames, the eval's `flicker`, ~70/255) and a grey mean. One that
learned the corpus (flat backgrounds with a moving shape, `curation.synth` scene "shapes") makes frames that
change little from one to the next, in the background colour its prompt names, with a shape on it.
`learning_figures` measures the video generated from a prompt and the one generated from a training clip's
first frame on the same footing as the clips: frames at the stage's frame rate and size, 0-255 levels.

The temporal figures (`flicker`, `motion`) are the evaluation's own (`training.inference.evaluation`: the demo's
videos are scored by `score_videos` and logged to the last stage's run as `eval/<metric>`, the clips by the same
`Scorers`); the figures here are those the evaluation has no counterpart for: the mean level, the contrast,
the share of pixels on a shape, and how closely the background follows the prompt's colour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# A pixel belongs to the shape when one of its channels is this far from its frame's median colour (the
# background): the corpus's shapes are bright on dark backgrounds of the opposite hue (> 100 levels apart).
SHAPE_LEVELS = 64


def frame_medians(frames: np.ndarray) -> np.ndarray:
    """Each frame's median colour, (T, 3): the flat background of a shapes clip, whatever the shape does."""
    return np.median(frames.reshape(len(frames), -1, 3).astype(np.float32), axis=1)


def frame_stats(frames: np.ndarray) -> dict[str, float]:
    """Of (T, H, W, 3) uint8 frames: mean level, standard deviation, and the share of pixels off the background
    (`SHAPE_LEVELS`)."""
    pixels = frames.astype(np.float32)
    background = frame_medians(pixels)[:, None, None, :]
    shape = float((np.abs(pixels - background).max(axis=-1) > SHAPE_LEVELS).mean())
    return {"mean": float(pixels.mean()), "std": float(pixels.std()), "shape": shape}


def training_clips(stage: Any, clips: int = 8) -> list[tuple[str, np.ndarray]]:
    """`clips` (caption, frames) pairs exactly as the stage's data loader gave them to the model; frames are
    uint8 (T, H, W, 3)."""
    from training.data.stage_data import StageData

    pixels_stage = stage.replace(latents="off")  # decoded frames, whatever `svp encode` stored
    batches = StageData(pixels_stage, 0, 1, stage.seed).batches(None)
    out: list[tuple[str, np.ndarray]] = []
    while len(out) < clips:
        batch = next(batches)
        video = batch.video  # (B, 3, T, H, W) in [-1, 1]
        pixels = ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()
        out.extend(zip(batch.captions, pixels, strict=True))
    return out[:clips]


def showcase(clips: list[tuple[str, np.ndarray]]) -> tuple[str, np.ndarray]:
    """The captioned clip whose shape shows most (the largest contrast): the demo prompts with its caption and
    starts its image-to-video sample from its first frame."""
    captioned = [clip for clip in clips if clip[0].strip()] or clips
    return max(captioned, key=lambda clip: float(clip[1].std()))


def prompt_following(generated: np.ndarray, prompt: str, clips: list[tuple[str, np.ndarray]]) -> dict:
    """How far the generated video's background colour is from that of the training clips with the prompt's
    caption and from that of the clips with other captions (mean absolute difference over R, G, B, in
    levels). A model that follows its prompt is much nearer the first; one that ignores it is as near both."""
    colour = frame_medians(generated).mean(axis=0)

    def distance(selected: list[np.ndarray]) -> float | None:
        if not selected:
            return None
        return float(
            np.mean([np.abs(colour - frame_medians(frames).mean(axis=0)).mean() for frames in selected])
        )

    return {
        "same_caption": distance([frames for caption, frames in clips if caption == prompt]),
        "other_captions": distance([frames for caption, frames in clips if caption != prompt]),
    }


def clip_figures(clips: list[tuple[str, np.ndarray]], fps: float) -> dict[str, float]:
    """The mean over the clips of `frame_stats` and of the weight-free metrics the evaluation gives the
    generated videos (`training.inference.evaluation.Scorers`: flicker, motion, sanity)."""
    from training.inference.evaluation import Scorers

    scorers = Scorers(None, fps)
    stats = [frame_stats(frames) | scorers.score(frames, caption) for caption, frames in clips]
    keys = sorted(set().union(*stats))
    return {key: float(np.mean([s[key] for s in stats if key in s])) for key in keys}


def loss_curve(tracking_uri: str, pipeline: str, window: int = 10) -> dict[str, tuple[float, float]]:
    """Median `train/loss` of the first and of the last `window` logged steps of each stage's latest MLflow run.
    One step's loss depends on the noise level it drew, and an x0-predicting model's velocity loss weighs a
    near-clean draw by up to 1/0.05² (`model.flow.velocity_from_sample`): one such step would move a mean of
    ten; the median says whether the loss fell."""
    from mlflow.tracking import MlflowClient

    from training.tracking.runs import TAG_STAGE

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(pipeline)
    if experiment is None:
        return {}
    curves: dict[str, tuple[float, float]] = {}
    for run in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]):
        stage = run.data.tags.get(TAG_STAGE)
        history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
        if stage and history:
            first, last = history[:window], history[-window:]
            curves[stage] = (
                float(np.median([m.value for m in first])),
                float(np.median([m.value for m in last])),
            )
    return curves


def write_strip(rows: list[np.ndarray], path: Path, frames: int = 6, scale: int = 2) -> Path:
    """A PNG of `frames` frames across time of each video in `rows`, one above the other (resized to the
    first's frame size)."""
    import cv2

    def row(video: np.ndarray) -> np.ndarray:
        picks = np.linspace(0, len(video) - 1, frames).round().astype(int)
        return np.concatenate([video[i] for i in picks], axis=1)

    strips = [row(video) for video in rows]
    height, width = strips[0].shape[:2]
    gap = np.full((4, width, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for strip in strips:
        if strip.shape[:2] != (height, width):
            strip = cv2.resize(strip, (width, height), interpolation=cv2.INTER_AREA)
        parts += [gap, strip] if parts else [strip]
    image = np.concatenate(parts, axis=0)
    image = cv2.resize(image, (width * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def learning_figures(
    report: Any,
    names: tuple[str, ...],
    prompt: str,
    clips: list[tuple[str, np.ndarray]],
    tracking_uri: str,
    pipeline: str,
    png: Path,
    fps: float,
) -> dict[str, Any]:
    """For the videos `names` of the demo's evaluation `report` (`training.inference.evaluation.EvalReport`:
    each video's path and metrics, generated with `prompt`): their statistics beside their metrics, the same of
    the training clips (`training_clips`, under "training"), how closely each video follows its prompt, the
    evaluation's means and run, the loss of each stage (first, last), and `png`: frames of each video, one
    above the other, above the clip the prompt was taken from (`showcase`). `fps`: the clips' frame rate."""
    from model.video_io import read_frames

    scored = {video["name"]: video for video in report.videos}
    frames = {name: read_frames(scored[name]["path"]) for name in names}
    write_strip([*frames.values(), showcase(clips)[1]], png)
    return {
        "videos": {name: frame_stats(video) | scored[name]["metrics"] for name, video in frames.items()},
        "training": clip_figures(clips, fps),
        "eval": {
            "metrics": report.metrics,
            "run_id": report.run_id,
            "step": report.step,
            "out": report.out_dir,
        },
        "prompt": prompt,
        "follows": {name: prompt_following(video, prompt, clips) for name, video in frames.items()},
        "loss": loss_curve(tracking_uri, pipeline),
        "frames_png": str(png),
    }
