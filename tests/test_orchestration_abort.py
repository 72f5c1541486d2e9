"""Ctrl-C: a real `svp curate` / `svp train` in its own session and its own Ray gets SIGINT on its whole process
group (what a terminal's Ctrl-C does), exits 130 with `svp: aborted`, keeps what finished, and the same command
run again finishes from there."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from process_groups import own_session_svp, wait_while_running
from training_runs import tiny_data

from curation.resume import MANIFEST, RESULTS, WORK_DIR
from curation.synth import VIDEOS_DIR, make_corpus
from orchestration.cli import main

pytestmark = pytest.mark.slow


def _interrupt_when(args: list[str], ready: Callable[[], bool], timeout_s: float = 300) -> tuple[int, str]:
    """Run `svp ARGS` in its own session with its own Ray; SIGINT its process group once `ready()`.
    Returns (exit status, output)."""
    with own_session_svp(args) as proc:
        wait_while_running(proc, ready, timeout_s, "the interrupt")
        os.killpg(proc.pid, signal.SIGINT)
        output = proc.communicate(timeout=120)[0].decode()
        return proc.returncode, output


def test_ctrl_c_during_curation_exits_130_and_the_rerun_resumes(ray_session, tmp_path):
    truth = make_corpus(tmp_path, 6, seed=9)
    config = tmp_path / "curate.yaml"
    # One decode task at a time, so the interrupt lands while sources are still pending.
    config.write_text(yaml.safe_dump({"ray": {"decode_concurrency": 1, "scorer_batch_size": 1}}))
    out = tmp_path / "out"
    args = ["curate", "--input", str(tmp_path / VIDEOS_DIR), "--output", str(out), "--config", str(config)]
    manifest = out / WORK_DIR / MANIFEST

    code, output = _interrupt_when(args, lambda: manifest.is_file() and manifest.read_text().count("\n") >= 1)
    assert code == 130, output[-3000:]
    assert "svp: aborted" in output
    assert not (out / "report.json").exists()
    results = out / WORK_DIR / RESULTS
    finished = {p.name: p.stat().st_mtime_ns for p in results.glob("*.parquet")}

    assert main(args) == 0
    # What finished before the interrupt was kept, not redone; everything is accounted for.
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.parquet") if p.name in finished} == finished
    assert len(manifest.read_text().splitlines()) == len(truth.videos) + len(truth.broken)
    assert (out / "report.json").is_file()


def _committed_checkpoint(storage: Path) -> bool:
    """Whether Ray Train has committed a checkpoint of the run (listed in its snapshot, which is what a rerun
    resumes from); a checkpoint folder alone may still be uploading when it appears."""
    for snapshot in storage.glob("abort-image-*/checkpoint_manager_snapshot.json"):
        try:
            if "checkpoint_step" in snapshot.read_text():
                return True
        except OSError:
            pass
    return False


def test_ctrl_c_during_training_exits_130_and_the_rerun_resumes(ray_session, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    preset = yaml.safe_load((Path(__file__).parents[1] / "training" / "presets" / "tiny.yaml").read_text())
    image = {**preset["stages"][0], "steps": 40, "sample": None, "checkpoint": {"every": 4, "keep_last": 2}}
    pipeline = tmp_path / "abort.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "abort", "defaults": preset["defaults"], "stages": [image]}))
    work = tmp_path / "work"
    data = tiny_data(tmp_path)
    args = ["train", str(pipeline), "--var", f"data_root={data}", "--work-dir", str(work), "--workers", "1"]
    code, output = _interrupt_when(args, lambda: _committed_checkpoint(work / "ray"))
    assert code == 130, output[-3000:]
    assert "svp: aborted" in output
    # The interrupted driver ended its MLflow runs KILLED (stage and pipeline), not left RUNNING.
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("abort").experiment_id])
    assert sorted(run.info.status for run in runs) == ["KILLED", "KILLED"], output[-3000:]
    assert all("svp.error" in run.data.tags for run in runs)
    export = work / "abort" / "image" / "export"
    assert not (export / "model.safetensors").exists(), "an interrupted stage must not be exported"

    # The rerun, a real `svp train` again: it resumes, and its console is calm (the workers' output, DeepSpeed's
    # warnings and Ray Train's reports stay in the Ray session's log files, whose folder it prints).
    with own_session_svp(args, drop_env=("RAY_LOG_TO_DRIVER",), text=True) as rerun:
        console = rerun.communicate(timeout=600)[0]
        assert rerun.returncode == 0, console[-3000:]
        for noise in ("TrainingReport", "DeepSpeed", "WARNING", "it/s", "{'"):
            assert noise not in console, f"{noise!r} on the console:\n{console}"
        assert len(console.splitlines()) < 40, console
        logs = Path(console.split("Ray workers' logs: ")[1].split()[0])  # in the Ray folder, removed after
        assert logs.is_dir() and any(logs.glob("worker-*.out")), logs
    assert (export / "model.safetensors").is_file()
    client = MlflowClient(f"sqlite:///{work.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("abort").experiment_id])
    resumed = [r.data.metrics.get("train/resumed_from_step", 0) for r in runs]
    assert max(resumed) >= 4, "the rerun did not resume from the interrupted run's checkpoint"
