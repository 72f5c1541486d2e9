"""MLflow tracking against a real sqlite store: run hierarchy, re-attach, params, metrics, artifacts."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import socket
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from process_groups import own_session_svp, wait_while_running
from training_runs import tiny_data
from waiting import wait_until

from curation.format import thresholds_digest
from training.errors import StageConfigError
from training.tracking.runs import (
    PARENT_TAG,
    TAG_ERROR,
    TAG_EXPORT,
    TAG_STAGE,
    RunLogger,
    SenderLimits,
    Tracker,
    end_runs_after,
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
    logger.log_json({"kept": ["a"]}, "init_from/keys.json")
    assert logger.close()
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
    assert [a.path for a in client.list_artifacts(child, "init_from")] == ["init_from/keys.json"]
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
    interrupted = "KeyboardInterrupt: interrupted (Ctrl-C or SIGTERM)"  # Ray's bare re-raise, explained
    for run_id, error in ((child, interrupted), (parent, "SystemExit: 0")):
        run = client.get_run(run_id)
        assert (run.info.status, run.data.tags[TAG_ERROR]) == ("KILLED", error)


def test_a_tracking_failure_while_ending_runs_never_hides_the_stage_error(work_dir, caplog):
    work_dir.mkdir()
    tracker = Tracker(resolve_tracking_uri(work_dir), "demo", work_dir)
    parent = tracker.parent_run()
    child = tracker.stage_run(parent, "image", 0, params={}, tags={}, config={})
    tracker.client.delete_run(child)  # MLflow now refuses to touch it, as a server that went away would
    caplog.set_level(logging.WARNING, logger="svp.training")
    end_runs_after(tracker, KeyboardInterrupt(), child, parent)  # does not raise: the stage's error goes on
    assert f"could not end run {child} as KILLED" in caplog.text
    run = tracker.client.get_run(parent)
    assert (run.info.status, run.data.tags[TAG_ERROR]) == (
        "KILLED",
        "KeyboardInterrupt: interrupted (Ctrl-C or SIGTERM)",
    )


def _stage_run(work_dir: Path) -> tuple[str, str]:
    work_dir.mkdir()
    uri = resolve_tracking_uri(work_dir)
    tracker = Tracker(uri, "demo", work_dir)
    return uri, tracker.stage_run(tracker.parent_run(), "image", 0, params={}, tags={}, config={})


def test_worker_logger_batches_metrics_until_the_step_count_or_a_flush(work_dir):
    uri, child = _stage_run(work_dir)
    client = MlflowClient(uri)
    logger = RunLogger(uri, child, SenderLimits(flush_every_steps=3, flush_every_s=3600))
    logger.log_metrics({"train/loss": 1.0}, 1)
    logger.log_metrics({"train/loss": 0.5}, 2)
    time.sleep(1.0)
    assert client.get_metric_history(child, "train/loss") == [], "sent before a batch was due"
    logger.log_metrics({"train/loss": 0.25}, 3)  # the third step: a batch is due
    with contextlib.suppress(TimeoutError):  # the assertion below says what arrived
        wait_until(lambda: len(client.get_metric_history(child, "train/loss")) >= 3, 30, "3 metrics")
    assert [m.step for m in client.get_metric_history(child, "train/loss")] == [1, 2, 3]
    logger.log_metrics({"train/loss": 0.125}, 4)
    logger.flush()  # what a checkpoint does: no waiting, but it goes now
    with contextlib.suppress(TimeoutError):  # the assertion below says what arrived
        wait_until(lambda: len(client.get_metric_history(child, "train/loss")) >= 4, 30, "4 metrics")
    assert [m.step for m in client.get_metric_history(child, "train/loss")] == [1, 2, 3, 4]
    assert logger.close()


def test_worker_logger_survives_an_unreachable_server_and_says_what_was_lost(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv(
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"
    )  # what RunLogger sets in a worker, undone after
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sample = tmp_path / "step00000002.mp4"
    sample.write_bytes(b"not uploaded")
    limits = SenderLimits(flush_every_steps=1, flush_every_s=0.1, max_buffered=10, close_timeout_s=5)
    logger = RunLogger(f"http://127.0.0.1:{port}", "0" * 32, limits)
    caplog.set_level(logging.WARNING, logger="svp.training")
    start = time.monotonic()
    for step in range(1, 8):
        logger.log_metrics({"train/loss": 1.0 / step, "train/lr": 0.1}, step)  # never raises, never waits
    logger.log_artifact(sample, "samples")
    assert time.monotonic() - start < 1.0
    assert not logger.close()  # the server never came: False after the timeout, with warnings
    warnings = [r.getMessage() for r in caplog.records]
    assert any("cannot reach the tracking server" in w for w in warnings), warnings
    assert sum("dropping the oldest" in w for w in warnings) == 1, warnings  # said once
    lost = [w for w in warnings if re.search(r"\b1[02] metric values are lost", w)]  # 2 may be in flight
    assert len(lost) == 1 and str(sample) in lost[0], warnings
    assert sample.read_bytes() == b"not uploaded"


def _tiny_image_pipeline(tmp_path: Path, name: str, **stage: object) -> Path:
    """The tiny preset's image stage alone, as a pipeline file `svp train` runs."""
    preset = yaml.safe_load((Path(__file__).parents[1] / "training" / "presets" / "tiny.yaml").read_text())
    image = {**preset["stages"][0], **stage}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "defaults": preset["defaults"], "stages": [image]}))
    return path


@pytest.mark.slow
def test_sigterm_ends_the_stage_and_pipeline_runs_killed(tmp_path, monkeypatch):
    # A real `svp train` gets SIGTERM on its own pid (what `kill` or Kubernetes sends) once Ray Train runs the
    # stage (its run folder exists).
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pipeline = _tiny_image_pipeline(tmp_path, "term", steps=400, sample=None)
    work = tmp_path / "work"
    args = ["train", str(pipeline), "--var", f"data_root={tiny_data(tmp_path)}", "--work-dir", str(work)]
    # RAY_AUTH_MODE: orchestration.ray_connect sets it after Ray is imported, too late for Ray 2.60 in a fresh
    # process (the driver then refuses its own local Ray); a user's shell has it from the start.
    with own_session_svp(args, set_env={"RAY_AUTH_MODE": "token"}) as proc:
        wait_while_running(proc, lambda: any(work.glob("ray/term-image-*")), 300, "the SIGTERM")
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 143, output[-3000:]
    assert "svp: aborted" in output
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("term").experiment_id])
    assert sorted((r.data.tags.get(TAG_STAGE), r.info.status) for r in runs) == [
        ("-", "KILLED"),
        ("image", "KILLED"),
    ], output
    # Ray re-raises the interrupt of a SIGTERM that lands in ray.get as a bare KeyboardInterrupt.
    reasons = {"KeyboardInterrupt: interrupted (Ctrl-C or SIGTERM)", "Terminated: SIGTERM"}
    assert all(run.data.tags[TAG_ERROR] in reasons for run in runs), output
