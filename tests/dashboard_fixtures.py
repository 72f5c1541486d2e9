"""A demo-like curation folder and two tiny real training runs, made once per test session for the
dashboard tests (curation on the session Ray, training with the real trainer on 1 worker, 2 steps)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from training_runs import image_pipeline, tiny_data

from training.driver.stage_run import run_stage
from training.tracking.runs import Tracker

_MADE: dict[str, Any] = {}
PIPELINE = "tiny"
LRS = (1.0e-3, 3.0e-3)
EVAL_PROMPT = "a small red square"


def curated_folder(base: Path) -> Path:
    """`svp demo`'s curation on a 4-video synthetic corpus (with its broken files): real thumbnails,
    real shards, real report. Read-only for tests: copy it (`curated_copy`) before re-filtering."""
    if "curated" not in _MADE:
        from curation.config import load_config
        from curation.pipeline import run_curation
        from curation.synth import VIDEOS_DIR, make_corpus

        make_corpus(base / "raw", 4, seed=2)
        out = base / "curated"
        run_curation(str(base / "raw" / VIDEOS_DIR), out, load_config(None))
        _MADE["curated"] = out
    return _MADE["curated"]


def curated_copy(base: Path, dest: Path) -> Path:
    shutil.copytree(curated_folder(base), dest)
    return dest


def two_runs(base: Path) -> Path:
    """Two runs of the tiny image stage that differ only in the learning rate, in one sqlite store;
    returns the store's work dir (`--runs`)."""
    if "runs" not in _MADE:
        store = base / "store"
        store.mkdir(parents=True, exist_ok=True)
        data = tiny_data(base)
        for i, lr in enumerate(LRS):
            pipeline = image_pipeline(
                data,
                **{
                    "stages.image.steps": 2,
                    "stages.image.optimizer.lr": lr,
                    "stages.image.optimizer.warmup_steps": 0,
                    # One sample video at the last step, for the side-by-side samples.
                    "stages.image.sample": {
                        "every": 2,
                        "prompt": "a small red square",
                        "num_frames": 1,
                        "steps": 2,
                    },
                    "stages.image.checkpoint.every": 2,
                    # Scored at export (training.inference.evaluation): eval metrics for `svp runs` and the page.
                    "stages.image.eval": {"prompts": [EVAL_PROMPT], "num_frames": 5, "steps": 2},
                },
            )
            work = base / f"work{i}"
            tracker = Tracker(f"sqlite:///{store.resolve()}/mlflow.db", pipeline.name, work)
            run_stage(pipeline, "image", workers=1, work_dir=work, tracker=tracker)
        _MADE["runs"] = store
    return _MADE["runs"]
