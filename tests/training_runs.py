"""Shared tiny training runs for the training tests.

A Ray Train + DeepSpeed run costs 30-60 s on 2 cores, so runs that several tests compare against are made
once per test session and cached here (keyed by name), under a session temp folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shard_fixtures import make_shards

from training.config import load_preset
from training.driver.stage_run import StageResult, run_stage
from training.tracking.runs import Tracker

_RUNS: dict[str, Any] = {}
STEPS = 12
CHECKPOINT_EVERY = 4


def tiny_data(base: Path) -> Path:
    """8 clips of 64x64, 2 s at 12 fps: fills every bucket of the tiny preset."""
    if "data" not in _RUNS:
        _RUNS["data"] = make_shards(
            base / "data", num_clips=8, sizes=((64, 64),), frames=24, fps=12.0, seed=3
        )
    return _RUNS["data"]


def image_pipeline(data: Path, **overrides: Any):
    """The tiny preset with a 12-step image stage that checkpoints every 4 steps and renders no samples."""
    values = {
        "stages.image.steps": STEPS,
        "stages.image.checkpoint.every": CHECKPOINT_EVERY,
        "stages.image.sample": None,
        **overrides,
    }
    return load_preset("tiny", variables={"data_root": str(data)}, overrides=values)


# The reference run's `eval:` block: 2 videos (one per rank) every 4 steps during training (steps 4 and 8) and
# at export (step 12). It changes no weight: the failover test compares a run without it to this one, bit for bit.
REFERENCE_EVAL = {"prompts": ["a small red square"], "seeds": [0, 1], "num_frames": 5, "steps": 2, "every": 4}


def reference_run(tmp_path_factory: Any) -> StageResult:
    """The image stage on 2 workers, uninterrupted (the baseline of the loss and failover tests), with an
    `eval:` block evaluated during training (`REFERENCE_EVAL`)."""
    if "reference" not in _RUNS:
        base = tmp_path_factory.mktemp("reference")
        data = tiny_data(tmp_path_factory.getbasetemp())
        pipeline = image_pipeline(data, **{"stages.image.eval": REFERENCE_EVAL})
        tracker = sqlite_tracker(pipeline, base / "work")
        _RUNS["reference"] = run_stage(pipeline, "image", workers=2, work_dir=base / "work", tracker=tracker)
    return _RUNS["reference"]


def sqlite_tracker(pipeline: Any, work_dir: Path) -> Tracker:
    """A tracker on the embedded sqlite store of `work_dir`, whatever MLFLOW_TRACKING_URI says."""
    work_dir.mkdir(parents=True, exist_ok=True)
    return Tracker(f"sqlite:///{work_dir.resolve()}/mlflow.db", pipeline.name, work_dir)
