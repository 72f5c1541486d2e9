"""The team's tracking path (infra/mlflow): a real `mlflow server --serve-artifacts` on a loopback port with a
real PostgreSQL behind it, and a real `svp train` stage logging to it through MLFLOW_TRACKING_URI. The server
is killed mid-stage and restarted: training goes on (exit 0), the worker warns, and what reaches the server is
consistent (every logged step exactly once) along with params, tags and artifacts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from process_groups import reap_group
from tracking_servers import MlflowServer, Postgres, find_postgres_bin
from training_runs import tiny_data
from waiting import wait_until

from training.tracking.runs import PARENT_TAG, TAG_DATASET, TAG_EXPORT, TAG_GIT, TAG_STAGE

pytestmark = pytest.mark.slow

STEPS = 16


@pytest.fixture
def mlflow_server(tmp_path):
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "no PostgreSQL found (initdb neither on the PATH nor in /usr/lib/postgresql/*/bin); "
            ".ci/run installs Debian's postgresql"
        )
    postgres = Postgres(bin_dir)
    artifacts = tmp_path / "artifact-store"
    artifacts.mkdir()
    server = MlflowServer(postgres.uri, artifacts)
    try:
        postgres.start()
        server.start()
        yield server
    finally:
        server.kill()
        postgres.stop()


def _pipeline(tmp_path: Path) -> Path:
    preset = yaml.safe_load((Path(__file__).parents[1] / "training" / "presets" / "tiny.yaml").read_text())
    image = {**preset["stages"][0], "steps": STEPS, "checkpoint": {"every": 4, "keep_last": 2}}
    image["sample"] = {**image["sample"], "every": 8}
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump({"name": "served", "defaults": preset["defaults"], "stages": [image]}))
    return path


def _child_run(client: MlflowClient):
    experiment = client.get_experiment_by_name("served")
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_STAGE}` = 'image'")
    return runs[0] if runs else None


def _logged_steps(client: MlflowClient) -> list[int]:
    run = _child_run(client)
    return [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] if run else []


def _wait(condition, proc: subprocess.Popen, what: str, timeout_s: float = 420) -> None:
    def check() -> bool:
        if condition():
            return True
        assert proc.poll() is None, f"svp train ended before {what}:\n{proc.stdout.read()[-3000:]}"
        return False

    wait_until(check, timeout_s, what, interval=0.2)


def _start_svp_train(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _restart_server_mid_stage(
    mlflow_server, client: MlflowClient, proc: subprocess.Popen, work: Path
) -> tuple[list[int], str]:
    """Kills the server once metrics arrive, waits for training to go on without it, restarts it and waits for
    `svp train` to end; returns the steps logged before the kill and the command's output."""
    _wait(lambda: _logged_steps(client), proc, "metrics on the server")
    before = _logged_steps(client)
    mlflow_server.kill()  # mid-stage: the worker's next sends fail
    checkpoints = work / "ray"
    seen = {p.name for p in checkpoints.glob("*/checkpoint_*")}
    # Training goes on without the server: a new checkpoint (whose flush fails) or the end of the stage.
    _wait(
        lambda: {p.name for p in checkpoints.glob("*/checkpoint_*")} - seen or proc.poll() is not None,
        proc,
        "progress while the server was down",
    )
    mlflow_server.start()
    output = proc.communicate(timeout=600)[0]
    return before, output


def _check_served_run(client: MlflowClient, before: list[int], worker_logs: str, work: Path):
    """Metrics: what was sent before the loss, then what was buffered and sent after the restart, each step
    once and in order. All of it when the server came back within the worker's wait at the stage's end
    (2 minutes); else the worker said what was lost. Returns the stage's run."""
    logged = _logged_steps(client)
    assert logged == list(range(1, len(logged) + 1)) and len(logged) >= len(before), logged
    assert len(logged) == STEPS or "metric values are lost" in worker_logs, logged
    child = _child_run(client)
    assert child.info.status == "FINISHED"
    assert child.data.params["steps"] == str(STEPS)
    assert child.data.params["checkpoint.every"] == "4"
    tags = child.data.tags
    assert tags[TAG_STAGE] == "image" and tags[TAG_DATASET] and tags[TAG_GIT]
    assert tags[TAG_EXPORT] == (work / "served" / "image" / "export").resolve().as_uri()
    parent = client.get_run(tags[PARENT_TAG])
    assert parent.info.status == "FINISHED"
    return child


def _check_served_artifacts(client: MlflowClient, child, mlflow_server, worker_logs: str, work: Path) -> None:
    """Artifacts went through the server (--serve-artifacts) into its artifact store; a sample the worker could
    not upload is named in its warning with the local file, which is kept."""
    run_id = child.info.run_id
    names = {
        a.path for folder in ("config", "export", "samples") for a in client.list_artifacts(run_id, folder)
    }
    assert {"config/stage.json", "export/model.safetensors", "export/pointer.json"} <= names, names
    stored = {p.name for p in mlflow_server.artifacts.rglob("*") if p.is_file()}
    assert {"stage.json", "model.safetensors"} <= stored, stored
    for sample in ("step00000008.mp4", "step00000016.mp4"):
        local = work / "served" / "image" / "samples" / sample
        assert local.is_file()
        assert f"samples/{sample}" in names and sample in stored or str(local) in worker_logs, names


def test_a_stage_logs_to_a_postgres_backed_server_and_survives_its_restart(mlflow_server, tmp_path):
    work = tmp_path / "work"
    args = [
        "train",
        str(_pipeline(tmp_path)),
        "--var",
        f"data_root={tiny_data(tmp_path)}",
        "--work-dir",
        str(work),
    ]
    ray_tmp = tempfile.mkdtemp(prefix="svps", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="token", MLFLOW_TRACKING_URI=mlflow_server.uri)
    client = MlflowClient(mlflow_server.uri)
    proc = _start_svp_train(args, env)
    try:
        before, output = _restart_server_mid_stage(mlflow_server, client, proc, work)
    finally:
        if proc.poll() is None:
            proc.kill()
        reap_group(proc.pid)
        worker_logs = "".join(
            p.read_text(errors="replace") for p in Path(ray_tmp).rglob("worker-*") if p.is_file()
        )
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, output[-3000:]
    assert "cannot reach the tracking server" in worker_logs, output[-3000:]
    assert before and before[-1] < STEPS, f"the server went away after the stage had ended ({before})"

    child = _check_served_run(client, before, worker_logs, work)
    _check_served_artifacts(client, child, mlflow_server, worker_logs, work)
