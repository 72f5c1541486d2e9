"""Did the demo's model learn? The generated video's statistics next to those of the clips it trained on.

A model that learned nothing turns noise into noise: per-pixel colours unrelated from one frame to the next
(mean absolute difference of consecutive frames ~70/255) and a grey mean. One that learned the corpus (flat
backgrounds with a moving shape, `curation.synth` scene "shapes") makes frames that change little from one to
the next and have the corpus's colours. `learning_figures` measures both on the same footing: frames at the
stage's frame rate and size, 0-255 levels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def frame_stats(frames: np.ndarray) -> dict[str, float]:
    """Consecutive-frame mean absolute difference, mean level and standard deviation of (T, H, W, 3) uint8."""
    pixels = frames.astype(np.float32)
    diff = float(np.abs(np.diff(pixels, axis=0)).mean()) if len(frames) > 1 else 0.0
    return {"frame_diff": diff, "mean": float(pixels.mean()), "std": float(pixels.std())}


def training_frames(stage: Any, clips: int = 8) -> list[np.ndarray]:
    """`clips` clips exactly as the stage's data loader gave them to the model, as uint8 (T, H, W, 3)."""
    from training.data import StageData

    batches = StageData(stage, 0, 1, stage.seed).batches(None)
    out: list[np.ndarray] = []
    while len(out) < clips:
        video = next(batches).video  # (B, 3, T, H, W) in [-1, 1]
        pixels = ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()
        out.extend(pixels)
    return out[:clips]


def mean_stats(videos: list[np.ndarray]) -> dict[str, float]:
    stats = [frame_stats(v) for v in videos]
    return {key: float(np.mean([s[key] for s in stats])) for key in stats[0]}


def loss_curve(tracking_uri: str, pipeline: str, window: int = 10) -> dict[str, tuple[float, float]]:
    """Median `train/loss` of the first and of the last `window` logged steps of each stage's latest MLflow run.
    One step's loss depends on the noise level it drew, and an x0-predicting model's velocity loss weighs a
    near-clean draw by up to 1/0.05² (`model.flow.velocity_from_sample`): one such step would move a mean of
    ten; the median says whether the loss fell."""
    from mlflow.tracking import MlflowClient

    from training.tracking import TAG_STAGE

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


def write_strip(
    generated: np.ndarray, training: np.ndarray, path: Path, frames: int = 6, scale: int = 2
) -> Path:
    """A PNG of `frames` frames across time: the generated video on top, a training clip below."""
    import cv2

    def row(video: np.ndarray) -> np.ndarray:
        picks = np.linspace(0, len(video) - 1, frames).round().astype(int)
        return np.concatenate([video[i] for i in picks], axis=1)

    top, bottom = row(generated), row(training)
    if bottom.shape != top.shape:
        bottom = cv2.resize(bottom, (top.shape[1], top.shape[0]), interpolation=cv2.INTER_AREA)
    gap = np.full((4, top.shape[1], 3), 255, np.uint8)
    strip = np.concatenate([top, gap, bottom], axis=0)
    strip = cv2.resize(
        strip, (strip.shape[1] * scale, strip.shape[0] * scale), interpolation=cv2.INTER_NEAREST
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def learning_figures(video: Path, stage: Any, tracking_uri: str, pipeline: str, png: Path) -> dict[str, Any]:
    """The generated video's statistics, the training clips' (the stage's data, 8 clips), the loss of each
    stage (first, last), and `png`: frames of the generated video above frames of a training clip."""
    from model.video_io import read_frames

    generated = read_frames(video)
    clips = training_frames(stage)
    write_strip(generated, max(clips, key=lambda clip: float(clip.std())), png)  # a clip whose shape shows
    return {
        "generated": frame_stats(generated),
        "training": mean_stats(clips),
        "loss": loss_curve(tracking_uri, pipeline),
        "frames_png": str(png),
    }
