"""`svp train` reruns what changed: a stage whose export matches its inputs is skipped, a changed stage
reruns with the reason, keeps its old export and gets a new MLflow child run; a truncated or half-written
export is never taken for a finished one."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow.tracking import MlflowClient
from training_runs import sqlite_tracker, tiny_data

from training.config import load_preset
from training.driver.fingerprints import FINGERPRINT_FILE, export_record
from training.driver.pipeline import run_pipeline
from training.driver.stage_plan import RERUN, RESTORE, RUN, SKIP, decide_stage
from training.tracking.runs import PARENT_TAG, TAG_EXPORT, TAG_STAGE, TAG_STAGE_FINGERPRINT

pytestmark = pytest.mark.slow
TWO = ["image", "video"]


def two_stage_pipeline(data, **overrides):
    """The tiny preset's first two stages at 2 steps each (no warm-up, so the lr shows), no samples."""
    values = {
        "stages.*.steps": 2,
        "stages.*.checkpoint.every": 2,
        "stages.*.sample": None,
        "stages.*.optimizer.warmup_steps": 0,
        **overrides,
    }
    return load_preset("tiny", variables={"data_root": str(data)}, overrides=values)


def _check_old_export_kept(work, video_fp: str) -> None:
    """The superseded export stays reachable under its fingerprint; export/ is the new one."""
    old = work / "tiny" / "video" / "exports" / video_fp
    assert json.loads((old / FINGERPRINT_FILE).read_text())["fingerprint"] == video_fp
    assert (old / "model.safetensors").read_bytes() != (
        work / "tiny" / "video" / "export" / "model.safetensors"
    ).read_bytes()


def _check_rerun_is_a_new_child_run(tracker, video_fp: str, rerun_fp: str) -> None:
    """A retrain is a new MLflow child run; the old one keeps its metrics and fingerprint."""
    client = MlflowClient(tracker.tracking_uri)
    parent = tracker.parent_run()
    runs = client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{TAG_STAGE}` = 'video'",
    )
    assert sorted(r.data.tags[TAG_STAGE_FINGERPRINT] for r in runs) == sorted([video_fp, rerun_fp])
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert steps == [1, 2], steps
    assert client.get_run(parent).data.tags["svp.step.video.status"] == "run"
    assert client.get_run(parent).data.tags["svp.step.image.status"] == "skipped"


def _check_unfinished_exports_rerun(pipeline, changed, work, image_fp: str) -> None:
    """An export whose weights were truncated, or whose fingerprint was never written, is not finished."""
    export = work / "tiny" / "image" / "export"
    weights = export / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    decision = decide_stage(changed, changed.stage("image"), work)
    assert decision.action == RERUN and "model.safetensors is 100 bytes" in decision.reason
    shutil.rmtree(export)
    assert decide_stage(changed, changed.stage("image"), work).action == RUN
    partial = work / "tiny" / "video" / "export"
    (partial / FINGERPRINT_FILE).unlink()
    decision = decide_stage(pipeline, pipeline.stage("video"), work, upstream={"image": image_fp})
    assert decision.action == RERUN and f"no {FINGERPRINT_FILE}" in decision.reason
    # Forcing (--from) reruns whatever the fingerprints say.
    assert decide_stage(
        pipeline, pipeline.stage("video"), work, force=True, upstream={"image": image_fp}
    ).reason.startswith("forced")


def test_changed_stage_reruns_with_reason_and_keeps_the_old_export(
    ray_session, tmp_path, tmp_path_factory, caplog
):
    data = tiny_data(tmp_path_factory.getbasetemp())
    work = tmp_path / "work"
    pipeline = two_stage_pipeline(data)
    tracker = sqlite_tracker(pipeline, work)
    first = run_pipeline(
        pipeline, stages=TWO, work_dir=work, tracker=tracker, parent_run_id=tracker.parent_run()
    )
    assert [r.skipped for r in first] == [False, False]
    image_fp, video_fp = first[0].fingerprint, first[1].fingerprint
    assert export_record(work / "tiny" / "video" / "export")[0]["fingerprint"] == video_fp

    # Unchanged: everything is skipped.
    again = run_pipeline(
        pipeline, stages=TWO, work_dir=work, tracker=tracker, parent_run_id=tracker.parent_run()
    )
    assert [r.skipped for r in again] == [True, True]

    # Only the second stage's lr changes: the first is skipped, the second reruns and says why.
    changed = two_stage_pipeline(data, **{"stages.video.optimizer.lr": 5e-4})
    plan = [decide_stage(changed, changed.stage(name), work) for name in TWO]
    assert [d.action for d in plan] == [SKIP, RERUN]
    assert "optimizer.lr 0.001 -> 0.0005" in plan[1].reason and video_fp in plan[1].reason
    rerun = run_pipeline(
        changed, stages=TWO, work_dir=work, tracker=tracker, parent_run_id=tracker.parent_run()
    )
    assert [r.skipped for r in rerun] == [True, False]
    assert rerun[0].fingerprint == image_fp and rerun[1].fingerprint != video_fp
    _check_old_export_kept(work, video_fp)
    _check_rerun_is_a_new_child_run(tracker, video_fp, rerun[1].fingerprint)
    _check_changed_back_is_restored(pipeline, tracker, work, video_fp, rerun[1].fingerprint)
    _check_unfinished_exports_rerun(pipeline, changed, work, image_fp)


def _check_changed_back_is_restored(pipeline, tracker, work, video_fp: str, rerun_fp: str) -> None:
    """The lr changed back: the kept export of exactly that fingerprint is put back, nothing trains, and
    MLflow points the stage to the run that trained it."""
    video = work / "tiny" / "video"
    decision = decide_stage(pipeline, pipeline.stage("video"), work)
    assert decision.action == RESTORE and decision.reason == f"restore from {video / 'exports' / video_fp}"
    client = MlflowClient(tracker.tracking_uri)
    parent = tracker.parent_run()
    trained = client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`{TAG_STAGE_FINGERPRINT}` = '{video_fp}'"
    )
    assert len(trained) == 1
    restored = run_pipeline(pipeline, stages=TWO, work_dir=work, tracker=tracker, parent_run_id=parent)
    assert [r.skipped for r in restored] == [True, True] and restored[1].restored_from is not None
    assert restored[1].mlflow_run_id == trained[0].info.run_id
    assert export_record(video / "export")[0]["fingerprint"] == video_fp
    assert export_record(video / "exports" / rerun_fp)[0]["fingerprint"] == rerun_fp  # moved aside, kept
    assert not (video / "exports" / video_fp).exists()
    tags = client.get_run(parent).data.tags
    assert (
        tags["svp.step.video.status"] == "restored"
        and tags["svp.step.video.run_id"] == trained[0].info.run_id
    )
    assert (
        client.get_run(trained[0].info.run_id).data.tags[TAG_EXPORT] == (video / "export").resolve().as_uri()
    )
    runs = client.search_runs([tracker.experiment_id], filter_string=f"tags.`{TAG_STAGE}` = 'video'")
    assert len(runs) == 2  # nothing trained: no new child run
    moved = next(r for r in runs if r.data.tags[TAG_STAGE_FINGERPRINT] == rerun_fp)
    assert moved.data.tags[TAG_EXPORT] == (video / "exports" / rerun_fp).resolve().as_uri()
    assert decide_stage(pipeline, pipeline.stage("video"), work).action == SKIP
