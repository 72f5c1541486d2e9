"""One driver per stage: a second `svp train` on a stage that a live driver holds refuses in one line naming
it; a lock left by a dead driver (or one whose heartbeat stopped on another host) is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_files import write_pipeline
from process_groups import wait_while_running
from shard_fixtures import make_shards

from orchestration.cli import main
from orchestration.pipeline.run import run_pipeline_file
from orchestration.pipeline.spec import load_spec
from training.config import load_preset
from training.driver.stage_lock import LOCK_FILE, StageLock, StageLockedError, check_unlocked, read_holder
from training.driver.stage_run import run_stage

ROOT = Path(__file__).resolve().parents[1]
HOLD = (
    "import sys, time; from pathlib import Path; from training.driver.stage_lock import StageLock\n"
    "lock = StageLock(Path(sys.argv[1]), 'image'); lock.acquire(); print('held', flush=True)\n"
    "if sys.argv[2] == 'die': import os; os._exit(0)  # killed: no release, the file stays\n"
    "time.sleep(600)\n"
)


def _holder(path: Path, how: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), how], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"), num_clips=4)


def test_a_live_driver_makes_svp_train_of_its_stage_refuse_in_one_line(tmp_path, data_root, capsys):
    work = tmp_path / "work"
    lock = work / "tiny" / "image" / LOCK_FILE
    holder = _holder(lock, "sleep")
    try:
        wait_while_running(holder, lock.exists, 60, "the holder took the lock")
        record = json.loads(lock.read_text())
        assert (record["host"], record["pid"]) == (socket.gethostname(), holder.pid)
        expected = (
            f"stage 'image' is being trained by host {socket.gethostname()} pid {holder.pid} "
            f"since {record['since']} (lock {lock})"
        )
        argv = [
            "train",
            "tiny",
            "--var",
            f"data_root={data_root}",
            "--work-dir",
            str(work),
            "--stage",
            "image",
        ]
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == f"svp: error: {expected}"
        assert sorted(p.name for p in work.rglob("*")) == sorted(
            ["image", LOCK_FILE, "tiny"]
        )  # nothing else made
        # Past the pre-flight (a second driver that started in the same second), the stage run refuses too.
        pipeline = load_preset("tiny", variables={"data_root": str(data_root)})
        with pytest.raises(StageLockedError) as refused:
            run_stage(pipeline, "image", work_dir=work)
        assert str(refused.value) == expected
    finally:
        holder.kill()
        holder.wait()
    # Its holder is gone (SIGKILL: the file stays): the stage is free again.
    check_unlocked(lock, "image")


def test_a_lock_left_by_a_dead_driver_is_taken_over_and_freed(tmp_path, caplog):
    lock = tmp_path / "tiny" / "image" / LOCK_FILE
    dead = _holder(lock, "die")
    assert dead.wait(60) == 0 and lock.exists()
    assert read_holder(lock).pid == dead.pid
    check_unlocked(lock, "image")  # the pre-flight lets it through
    with StageLock(lock, "image") as mine:
        assert read_holder(lock) == mine.holder and mine.holder.pid == os.getpid()
    assert f"took over the lock {lock} left by host {socket.gethostname()} pid {dead.pid}" in caplog.text
    assert not lock.exists()


def test_another_hosts_lock_stands_while_its_heartbeat_is_fresh(tmp_path):
    lock = tmp_path / LOCK_FILE
    lock.write_text(
        json.dumps({"host": "elsewhere", "pid": 1, "since": "2026-01-01T00:00:00Z", "token": "t"})
    )
    with pytest.raises(StageLockedError, match="by host elsewhere pid 1 since 2026-01-01T00:00:00Z"):
        StageLock(lock, "video").acquire()
    old = time.time() - 11 * 60
    os.utime(lock, (old, old))  # no heartbeat for 11 minutes: its driver is gone
    with StageLock(lock, "video") as mine:
        assert read_holder(lock) == mine.holder
    assert not lock.exists()


def test_the_holder_refreshes_its_heartbeat_and_frees_the_lock_on_an_error(tmp_path):
    lock = tmp_path / LOCK_FILE
    with pytest.raises(KeyboardInterrupt), StageLock(lock, "video", heartbeat_s=0.05):
        old = time.time() - 3600
        os.utime(lock, (old, old))
        deadline = time.monotonic() + 10
        while lock.stat().st_mtime < time.time() - 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock.stat().st_mtime > time.time() - 60  # refreshed
        raise KeyboardInterrupt
    assert not lock.exists()


def test_svp_pipeline_run_refuses_before_curating_when_a_driver_holds_a_stage(tmp_path):
    path = write_pipeline(tmp_path)
    spec = load_spec(path)
    lock = spec.work / "pipe" / "video" / LOCK_FILE
    holder = _holder(lock, "sleep")
    try:
        wait_while_running(holder, lock.exists, 60, "the holder took the lock")
        with pytest.raises(
            StageLockedError, match=f"stage 'video' is being trained by host .* pid {holder.pid}"
        ):
            run_pipeline_file(spec)
        assert sorted(p.name for p in spec.work.rglob("*")) == sorted(["pipe", "video", LOCK_FILE])
    finally:
        holder.kill()
        holder.wait()
