"""MLflow tracking against a real sqlite store: run hierarchy, re-attach, params, metrics, artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from curation.format import thresholds_digest
from training.errors import StageConfigError
from training.tracking import (
    PARENT_TAG,
    TAG_ERROR,
    TAG_EXPORT,
    TAG_STAGE,
    RunLogger,
    Tracker,
    resolve_tracking_uri,
    thresholds_hash,
)


@pytest.fixture
def work_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "work"


def test_default_store_is_sqlite_in_the_work_dir_and_env_overrides(work_dir, monkeypatch):
    assert resolve_tracking_uri(work_dir) == f"sqlite:///{work_dir.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert resolve_tracking_uri(work_dir) == "http://mlflow.example:5000"


def test_parent_and_stage_runs_are_created_once_and_reattached(work_dir):
    work_dir.mkdir()
    uri = resolve_tracking_uri(work_dir)
    tracker = Tracker(uri, "demo", work_dir)
    parent = tracker.parent_run()
    params = {"optimizer.lr": "0.001", "steps": "8"}
    child = tracker.stage_run(
        parent, "image", 0, params=params, tags={"svp.dataset_fingerprint": "abc"}, config={"steps": 8}
    )

    # A restarted driver (new Tracker, new client) finds the same runs instead of making new ones.
    again = Tracker(uri, "demo", work_dir)
    assert again.parent_run() == parent
    assert again.stage_run(parent, "image", 0, params=params, tags={}, config={"steps": 8}) == child
    other = again.stage_run(parent, "video", 1, params={"steps": "8"}, tags={}, config={})
    assert other != child

    client = MlflowClient(uri)
    run = client.get_run(child)
    assert run.data.tags[PARENT_TAG] == parent
    assert run.data.tags[TAG_STAGE] == "image"
    assert run.data.tags["svp.dataset_fingerprint"] == "abc"
    assert run.data.tags["svp.git_commit"]
    assert run.data.params == params
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "demo"
    assert experiment.artifact_location == (work_dir / "mlartifacts").resolve().as_uri()
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'"
    )
    assert sorted(r.data.tags[TAG_STAGE] for r in children) == ["image", "video"]

    with pytest.raises(StageConfigError, match=r"optimizer\.lr was '0\.001' .* now '0\.002'"):
        again.stage_run(parent, "image", 0, params={"optimizer.lr": "0.002"}, tags={}, config={})


def test_worker_logger_metrics_and_export_artifacts(work_dir):
    work_dir.mkdir()
    uri = resolve_tracking_uri(work_dir)
    tracker = Tracker(uri, "demo", work_dir)
    child = tracker.stage_run(tracker.parent_run(), "image", 0, params={}, tags={}, config={})
    logger = RunLogger(uri, child)
    for step in (1, 2, 3):
        logger.log_metrics({"train/loss": 1.0 / step, "perf/mfu": 0.1}, step)
    export = work_dir / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    (export / "model.safetensors").write_bytes(b"weights")
    tracker.log_export(child, export)
    tracker.finish(child, ok=True)

    client = MlflowClient(uri)
    history = client.get_metric_history(child, "train/loss")
    assert [(m.step, round(m.value, 4)) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.3333)]
    run = client.get_run(child)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_EXPORT] == export.resolve().as_uri()
    names = {a.path for a in client.list_artifacts(child, "export")}
    assert {"export/model.safetensors", "export/config.json", "export/pointer.json"} <= names
    assert any((work_dir / "mlartifacts").rglob("model.safetensors"))


def test_thresholds_hash_follows_the_curation_thresholds(tmp_path):
    out = tmp_path / "curated"
    (out / "shards").mkdir(parents=True)
    assert thresholds_hash([str(out)]) == "none"
    (out / "thresholds.yaml").write_text("motion_score: {min: 0.1}\n")
    first = thresholds_hash([str(out)])
    assert first != "none"
    assert thresholds_hash([str(out / "shards")]) == first  # the shards folder finds its parent's file
    # Formatting does not matter, meaning does: the tag equals curation's own hash of the same thresholds.
    (out / "thresholds.yaml").write_text("motion_score:\n  min: 0.1\n")
    assert thresholds_hash([str(out)]) == first == thresholds_digest({"motion_score": {"min": 0.1}})
    (out / "thresholds.yaml").write_text("motion_score: {min: 0.2}\n")
    assert thresholds_hash([str(out)]) != first


def test_interrupted_driver_ends_its_runs_killed_with_the_reason(work_dir):
    # What run_stage / run_pipeline do when Ctrl-C (or Ray Train's sys.exit on SIGINT) reaches the driver.
    work_dir.mkdir()
    tracker = Tracker(resolve_tracking_uri(work_dir), "demo", work_dir)
    parent = tracker.parent_run()
    child = tracker.stage_run(parent, "image", 0, params={}, tags={}, config={})
    tracker.finish(child, error=KeyboardInterrupt())
    tracker.finish(parent, error=SystemExit(0))

    client = MlflowClient(tracker.tracking_uri)
    for run_id, error in ((child, "KeyboardInterrupt: "), (parent, "SystemExit: 0")):
        run = client.get_run(run_id)
        assert (run.info.status, run.data.tags[TAG_ERROR]) == ("KILLED", error)
