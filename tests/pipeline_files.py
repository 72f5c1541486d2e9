"""Pipeline files for the `svp pipeline` tests: a synthetic corpus, keep-all thresholds, two tiny stages."""

from __future__ import annotations

from pathlib import Path

import yaml

from curation.synth import VIDEOS_DIR, make_corpus

KEEP_ALL = {"scores": {}, "caption": {"require_caption": False, "max_caption_issues": None}}


def write_pipeline(
    folder: Path, input: str | None = None, encode: dict | None = None, **training_overrides
) -> Path:
    """`folder/pipeline.yaml`: curate `input` (default folder/raw/videos) → filter → (encode, when given) →
    tiny stages image and video at one step each (no warm-up, no samples)."""
    overrides = {
        "stages.*.steps": 1,
        "stages.*.checkpoint.every": 1,
        "stages.*.sample": None,
        "stages.*.optimizer.warmup_steps": 0,
        **training_overrides,
    }
    spec = {
        "name": "pipe",
        "work_dir": "work",
        "curate": {"input": input or f"raw/{VIDEOS_DIR}", "config": "curate.yaml"},
        "filter": {"thresholds": "thresholds.yaml"},
        "training": {"preset": "tiny", "stages": ["image", "video"], "overrides": overrides},
    }
    if encode is not None:
        spec["encode"] = encode
    if not (folder / "thresholds.yaml").exists():
        (folder / "thresholds.yaml").write_text(yaml.safe_dump(KEEP_ALL))
    if not (folder / "curate.yaml").exists():
        # One decode task per source at once: on a two-node cluster they spread over both nodes.
        (folder / "curate.yaml").write_text(
            yaml.safe_dump({"ray": {"decode_concurrency": 4, "max_retries": 3}})
        )
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def make_pipeline(folder: Path, videos: int = 2) -> Path:
    make_corpus(folder / "raw", videos, seed=1, broken=False)
    return write_pipeline(folder)
