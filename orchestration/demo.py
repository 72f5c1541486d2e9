"""`svp demo`: the whole platform on one machine, in minutes, with no weights.

synthetic raw videos (with broken files) → curation (Ray Data) → the four tiny training stages (Ray Train +
DeepSpeed, MLflow) → a long video generated block by block from the last stage. Every step is the same code a
real run uses; only the sizes and the weight-free backends are small. Rerunning the command resumes: finished
sources, stages and the corpus are not redone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

DEMO_PROMPT = "a textured pattern drifting to the right"


@dataclass(frozen=True)
class DemoResult:
    raw: Path  # the synthetic corpus (OUT/raw/videos + ground_truth.json)
    curated: Path  # the curation output folder (sources/clips parquet, shards, report)
    work_dir: Path  # checkpoints, stage exports, MLflow store (mlflow.db + mlartifacts)
    video: Path  # the generated long video
    report: dict


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
    from orchestration.ray_connect import ray_connection
    from training.config import load_preset
    from training.pipeline import run_pipeline
    from training.sampling import generate_from_export

    out = Path(out)
    raw, curated, work_dir = out / "raw", out / "curated", out / "runs"
    if not (raw / "ground_truth.json").is_file():
        make_corpus(raw, videos)
    overrides = {"stages.*.steps": steps} if steps else {}
    pipeline = load_preset("tiny", variables={"data_root": str(curated)}, overrides=overrides)

    # One Ray for the whole demo: curation and every training stage use it.
    with ray_connection(address):
        report = run_curation(str(raw / VIDEOS_DIR), curated, load_config(None))
        results = run_pipeline(pipeline, workers=workers, work_dir=work_dir)
    video = generate_from_export(
        results[-1].export_dir,
        _prompt(curated),
        seconds,
        out / "demo.mp4",
        block_frames=4,
        steps=8,
        guidance_scale=3.0,
    )
    return DemoResult(raw, curated, work_dir, video, report)


def _prompt(curated: Path) -> str:
    """A caption of a kept clip (so the prompt looks like what the model saw), else a fixed one."""
    clips = pd.read_parquet(curated / "clips.parquet", columns=["caption", "kept"])
    captions = clips.loc[clips["kept"], "caption"].dropna()
    return str(captions.iloc[0]) if len(captions) else DEMO_PROMPT
