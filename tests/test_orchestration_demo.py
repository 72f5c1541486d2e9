"""`svp demo` end to end: synthetic raw video → curation → four tiny stages → a block-AR video, then a rerun
that redoes nothing. The one test where curation's real shards feed real training (real Ray, DeepSpeed, MLflow)."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from curation.synth import load_ground_truth
from model.video_io import read_frames
from orchestration.demo import run_demo
from training.tracking import PARENT_TAG, TAG_DATASET, TAG_STAGE, TAG_THRESHOLDS

pytestmark = pytest.mark.slow

STAGES = ["image", "video", "video-hires", "long-video-ar"]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_runs_the_platform_end_to_end_and_resumes(ray_session, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = run_demo(tmp_path / "demo", videos=6, workers=2, steps=2, seconds=4.0)

    # Curation: every raw file is accounted for, broken ones rejected, kept clips in shards.
    truth = load_ground_truth(result.raw)
    sources = pd.read_parquet(result.curated / "sources.parquet")
    assert len(sources) == len(truth.videos) + len(truth.broken)
    assert (sources["status"] == "rejected").sum() >= len(truth.broken)
    index = pd.read_parquet(result.curated / "shards" / "index.parquet")
    assert len(index) == result.report["clips"]["kept"] > 0

    # Training: four exports, one MLflow parent run with a child per stage tagged with the data it saw.
    for stage in STAGES:
        assert (result.work_dir / "tiny" / stage / "export" / "model.safetensors").is_file(), stage
    client = MlflowClient(f"sqlite:///{result.work_dir.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    parents = {r.data.tags[PARENT_TAG] for r in children}
    assert len(parents) == 1 and sorted(r.data.tags[TAG_STAGE] for r in children) == sorted(STAGES)
    thresholds = {r.data.tags[TAG_THRESHOLDS] for r in children}
    assert thresholds == {result.report["thresholds_hash"]}
    assert all(r.data.tags[TAG_DATASET] for r in children)
    assert all(r.data.metrics["train/loss"] > 0 for r in children)

    # Generation: several blocks of the last (block-AR) stage, a real mp4.
    frames = read_frames(result.video)
    assert frames.ndim == 4 and frames.shape[0] >= 16 and frames.shape[-1] == 3

    # A rerun redoes nothing: same shards, same exports.
    shards = {p.name: _digest(p) for p in sorted((result.curated / "shards").glob("*.tar"))}
    export = result.work_dir / "tiny" / "long-video-ar" / "export" / "model.safetensors"
    before = (export.stat().st_mtime_ns, _digest(export))
    again = run_demo(tmp_path / "demo", videos=6, workers=2, steps=2, seconds=4.0)
    assert {p.name: _digest(p) for p in sorted((again.curated / "shards").glob("*.tar"))} == shards
    assert (export.stat().st_mtime_ns, _digest(export)) == before
