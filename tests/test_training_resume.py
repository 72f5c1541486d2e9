"""Resuming a stage: a 2-worker stage continues on 1 worker through a universal checkpoint; a plain ZeRO
checkpoint on another world size is refused with a clear message instead of a DeepSpeed error."""

from __future__ import annotations

import json
import logging

import pytest
from mlflow.tracking import MlflowClient
from ray.train.v2.api.exceptions import TrainingFailedError
from training_runs import image_pipeline, sqlite_tracker, tiny_data

from model.pretrained import load_pretrained
from training.driver.disk_budget import disk_shortfall, stage_sizes
from training.driver.drills import FaultInjection, fault_drills
from training.driver.stage_run import run_stage
from training.errors import WorldSizeMismatchError
from training.worker.checkpoints import (
    RAY_STORAGE_MARKER,
    STATE_FILE,
    TrainState,
    export_complete,
    move_into_run,
    rank_staging_dir,
    resume_point,
    staging_dir,
)


def test_plain_zero_checkpoint_on_another_world_size_is_refused(tmp_path):
    checkpoint = tmp_path / "checkpoint_step00000004"
    (checkpoint / "ds" / "step00000004").mkdir(parents=True)
    (checkpoint / STATE_FILE).write_text(json.dumps(TrainState(step=4, world_size=2, zero_stage=2).to_dict()))
    assert resume_point(checkpoint, rank=0, world_size=2, zero_stage=2).tag == "step00000004"
    with pytest.raises(
        WorldSizeMismatchError, match="written by 2 workers with ZeRO-2; this run has 1 workers"
    ):
        resume_point(checkpoint, rank=0, world_size=1, zero_stage=2)


def test_staged_checkpoints_of_every_rank_are_moved_not_copied_into_one_folder(tmp_path):
    run_dir = tmp_path / "run"
    staged = rank_staging_dir(staging_dir(run_dir), 0) / "step00000004"
    staged.mkdir(parents=True)
    with pytest.raises(RuntimeError, match="not shared with this node"):  # no Ray storage marker: not Ray's
        move_into_run(staged, run_dir, "checkpoint_step00000004")
    (run_dir / RAY_STORAGE_MARKER).touch()
    files = {0: ["ds/latest", "ds/step00000004/mp_rank_00_model_states.pt", "data/rank00000.json"]}
    files[1] = ["ds/step00000004/zero_pp_rank_1_mp_rank_00_optim_states.pt", "data/rank00001.json"]
    inodes = {}
    for rank, names in files.items():
        staged = rank_staging_dir(staging_dir(run_dir), rank) / "step00000004"
        for name in names:
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            (staged / name).write_text(f"{rank}:{name}")
            inodes[name] = (staged / name).stat().st_ino
        (staged / "empty").mkdir()
        assert (
            move_into_run(staged, run_dir, "checkpoint_step00000004") == run_dir / "checkpoint_step00000004"
        )
        assert not [p for p in staged.rglob("*") if p.is_file()]  # nothing left behind: moved
    merged = run_dir / "checkpoint_step00000004"
    assert sorted(str(p.relative_to(merged)) for p in merged.rglob("*") if p.is_file()) == sorted(
        files[0] + files[1]
    )
    for name, inode in inodes.items():  # the same files, renamed: no second copy on disk
        assert (merged / name).stat().st_ino == inode and (merged / name).read_text().endswith(name)
    assert (merged / "empty").is_dir()


@pytest.mark.slow
def test_two_worker_stage_resumes_on_one_worker_through_universal_checkpoint(
    ray_session, tmp_path, tmp_path_factory, caplog, capfd, monkeypatch
):
    caplog.set_level(logging.WARNING, logger="svp.training")
    pipeline = image_pipeline(tiny_data(tmp_path_factory.getbasetemp()))
    work = tmp_path / "work"
    tracker = sqlite_tracker(pipeline, work)
    fault = FaultInjection(kill_at_step=8, rank=1, marker=str(tmp_path / "killed.txt"), during="save")
    # A node is lost while saving step 8 and no retries are allowed: the run stops with its step-4
    # checkpoint, and the killed save's staged copy is left in the run's own folder (not the system temp).
    with fault_drills(), pytest.raises(TrainingFailedError):
        run_stage(pipeline, "image", workers=2, work_dir=work, tracker=tracker, max_failures=0, fault=fault)
    assert not export_complete(work / "tiny" / "image" / "export")
    (run_dir,) = [p for p in (work / "ray").iterdir() if p.name.startswith("tiny-image-")]
    assert (staging_dir(run_dir) / "rank00001" / "step00000008").is_dir()

    # The same command on the one worker left: converted to universal, resumed at step 4, finished; with
    # the CLI's quiet console (TQDM_DISABLE=1) the conversion draws no progress bars in this process.
    monkeypatch.setenv("TQDM_DISABLE", "1")
    capfd.readouterr()
    result = run_stage(pipeline, "image", workers=1, work_dir=work, tracker=tracker)
    printed = capfd.readouterr()
    bars = [line for line in (printed.out + printed.err).splitlines() if "it/s]" in line]
    assert not [line for line in bars if not line.lstrip().startswith("(")], bars  # "(pid=…)": a worker's

    # (The converted step-4 checkpoint itself is gone by now: keep_last=2 keeps steps 8 and 12.)
    assert (
        "checkpoint_step00000004: written by 2 workers (ZeRO-2), resuming on 1 (ZeRO-2): converting"
        in caplog.text
    )
    info = json.loads((result.export_dir / "stage.json").read_text())
    assert (info["step"], info["world_size"]) == (12, 1)
    client = MlflowClient(tracker.tracking_uri)
    assert [m.value for m in client.get_metric_history(result.mlflow_run_id, "train/resumed_from_step")] == [
        4.0
    ]
    steps = sorted(m.step for m in client.get_metric_history(result.mlflow_run_id, "train/loss"))
    # The killed attempt logged steps 1..8, the resumed one 5..12.
    assert steps == sorted([*range(1, 9), *range(5, 13)])
    assert client.get_run(result.mlflow_run_id).data.tags["svp.world_size"] == "1"
    assert not (staging_dir(run_dir) / "rank00001").exists()  # the rerun removed the stale staging
    load_pretrained(result.export_dir)  # the consolidated weights load through the model's own loader

    # The sizes `svp train` checks the free disk against are those it writes (the tiny model's per-tensor
    # files in the universal checkpoint add a few %, nothing at 2B).
    checkpoint, export = stage_sizes(pipeline.stage("image"), use_gpu=False)
    written = sum(f.stat().st_size for f in (run_dir / "checkpoint_step00000012").rglob("*") if f.is_file())
    exported = sum(f.stat().st_size for f in result.export_dir.rglob("*") if f.is_file())
    assert 0.95 < written / checkpoint < 1.1 and 0.95 < exported / export < 1.3, (written, exported)
    assert disk_shortfall(pipeline.stage("image"), False, 10 * checkpoint) is None
    short = disk_shortfall(pipeline.stage("image"), False, checkpoint)
    assert "keep_last 2 + the one being written" in short and "lower checkpoint.keep_last" in short
    # Checkpoints and export on two filesystems (Ray's storage linked to /dev/shm): each is checked on its own.
    assert disk_shortfall(pipeline.stage("image"), False, 3 * checkpoint, export) is None
    short = disk_shortfall(pipeline.stage("image"), False, 3 * checkpoint, export // 2)
    assert "and the export's" in short, short
