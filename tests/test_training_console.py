"""A real `svp train` (its own Ray, 2 CPU workers, real DeepSpeed) as a user sees it: rank 0's progress on the
driver's console, each rank's full log in `<work_dir>/logs/<pipeline>/<stage>/rank<N>.log`, no Ray worker
noise without `--verbose`; and the stage's sample rendered by every rank at the same step, so no rank waits
in a collective while rank 0 renders (rank 0 alone writes it and logs `time/sample_s`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from process_groups import own_session_svp
from training_runs import tiny_data

pytestmark = pytest.mark.slow

STEPS = 4


def _svp(args: list[str], timeout_s: float = 600) -> tuple[int, str]:
    """`svp ARGS` in its own session with its own private Ray; (exit status, console output)."""
    # RAY_AUTH_MODE: what ray_connect sets for a private Ray, here before Ray is imported: Ray 2.60 reads it at
    # import, and this test is about the console, not about connecting.
    with own_session_svp(
        args,
        drop_env=("RAY_LOG_TO_DRIVER", "MLFLOW_TRACKING_URI"),
        set_env={"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")},
        text=True,
    ) as proc:
        output = proc.communicate(timeout=timeout_s)[0]
    return proc.returncode, output


def test_train_console_shows_progress_and_keeps_worker_logs_in_files(tmp_path):
    preset = yaml.safe_load((Path(__file__).parents[1] / "training" / "presets" / "tiny.yaml").read_text())
    image = {
        **preset["stages"][0],
        "steps": STEPS,
        "checkpoint": {"every": STEPS, "keep_last": 1},
        "sample": {"every": 2, "prompt": "a small red square", "num_frames": 1, "steps": 2},
    }
    pipeline = tmp_path / "console.yaml"
    pipeline.write_text(
        yaml.safe_dump({"name": "console", "defaults": preset["defaults"], "stages": [image]})
    )
    work = tmp_path / "work"
    data = tiny_data(tmp_path)
    args = ["train", str(pipeline), "--var", f"data_root={data}", "--work-dir", str(work), "--workers", "2"]
    code, console = _svp(args)
    assert code == 0, console[-3000:]

    # Rank 0's progress reached the driver (not a TTY here: plain lines), up to the last step.
    assert f"image: step {STEPS}/{STEPS}  loss " in console, console
    assert "samples/s" in console
    # Calm: no Ray worker output, DeepSpeed chatter or warnings without --verbose.
    for noise in ("(RayTrainWorker", "TrainController", "TrainingReport", "DeepSpeed", "WARNING", "[rank"):
        assert noise not in console, f"{noise!r} on the console:\n{console}"
    logs = work / "logs" / "console" / "image"
    assert f"workers' logs in {logs}" in console, console
    for rank in (0, 1):
        text = (logs / f"rank{rank}.log").read_text()
        assert f"rank {rank}: logging to" in text
        # Every rank renders each sample at the same step (no rank waits in a collective for rank 0).
        for step in (2, 4):
            assert f"sample at step {step} rendered in" in text and f"(rank {rank})" in text, text
    assert "DeepSpeed" in (logs / "rank0.log").read_text()  # the libraries' lines are in the files

    samples = work / "console" / "image" / "samples"
    assert sorted(p.name for p in samples.glob("*.mp4")) == ["step00000002.mp4", "step00000004.mp4"]
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    run = client.search_runs(
        [client.get_experiment_by_name("console").experiment_id], "tags.`svp.stage` = 'image'"
    )
    history = client.get_metric_history(run[0].info.run_id, "time/sample_s")
    assert [m.step for m in history] == [2, 4] and all(m.value > 0 for m in history)
