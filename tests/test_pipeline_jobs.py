"""The pipeline as a Ray job on a real two-node cluster started by the test (tests/ray_cluster.py), driven
through the real CLI: `svp pipeline submit`, `svp jobs list|status|logs --follow|stop`.

- a small pipeline (synthetic corpus → curate → filter → two tiny stages) submitted as a job finishes, and
  its curation tasks ran on both nodes;
- HEAVIEST PART (~4-6 min on 2 busy cores): the second node's raylet is killed while curation runs, the job
  is stopped after curation and submitted again: it resumes (curation skipped, or only the sources the lost
  node took down retried), finishes on the head node, and its shards are byte-identical to those of the
  undisturbed run. Every wait is on a state (a task placed, a step record, a job status), with a deadline;
- without the cluster's token, `svp jobs` and `svp curate --address` fail with one line saying what to set;
- without `--address`/`RAY_ADDRESS`, `svp curate` uses a private Ray, not the cluster running on the machine.

The cluster (one per module) is stopped at the end, whether the tests passed or not, by pid.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_files import make_pipeline, write_pipeline
from ray_cluster import ROOT, start_cluster
from waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
CURATE_TASK = "process_source"


@pytest.fixture(scope="module")
def cluster():
    started = start_cluster()
    try:
        yield started
    finally:
        started.stop()


def svp(cluster, *args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestration.cli", *args],
        env=env or cluster.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submit(cluster, pipeline: Path, *extra: str) -> str:
    done = svp(cluster, "pipeline", "submit", str(pipeline), "--address", cluster.dashboard, *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def follow(cluster, job: str) -> str:
    done = svp(cluster, "jobs", "logs", job, "--follow", "--address", cluster.dashboard)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    return done.stdout


def test_no_jobs_yet_says_so(cluster):
    """Before any submission (the first test of the module): a line saying so, not empty output."""
    listing = svp(cluster, "jobs", "list", "--address", cluster.dashboard)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert listing.stdout.strip() == "no jobs", listing.stdout


def curate_tasks(cluster, job_id: str | None = None) -> list[dict]:
    tasks = [t for t in cluster.state("tasks") if CURATE_TASK in (t.get("name") or "")]
    return [t for t in tasks if job_id is None or t.get("job_id") == job_id]


def shard_bytes(curated: Path) -> dict[str, bytes]:
    shards = curated / "shards"
    return {p.name: p.read_bytes() for p in sorted(shards.glob("*.tar"))} | {
        "index.parquet": (shards / "index.parquet").read_bytes()
    }


@pytest.fixture(scope="module")
def undisturbed(cluster, tmp_path_factory):
    """The pipeline submitted once and left alone: (folder, job id, logs, node ids of its curation tasks)."""
    folder = tmp_path_factory.mktemp("job-a")
    pipeline = make_pipeline(folder, videos=4)
    before = {t["task_id"] for t in curate_tasks(cluster)}
    job = submit(cluster, pipeline, "--ship-code")
    logs = follow(cluster, job)
    nodes = {t["node_id"] for t in curate_tasks(cluster) if t["task_id"] not in before}
    return folder, job, logs, nodes


def test_submitted_pipeline_finishes_with_curation_on_both_nodes(cluster, undisturbed):
    folder, job, logs, nodes = undisturbed
    assert "curate: run" in logs and "filter: run" in logs and "video: trained" in logs, logs[-3000:]
    # Both nodes the cluster started with (a node that ended on its own after its tasks still counts).
    assert nodes == {n["node_id"] for n in cluster.state("nodes")}, nodes
    status = svp(cluster, "jobs", "status", job, "--address", cluster.dashboard)
    assert status.returncode == 0 and f"{job}  SUCCEEDED" in status.stdout
    listing = svp(cluster, "jobs", "list", "--address", cluster.dashboard)
    assert job in listing.stdout and "pipeline run pipeline.yaml" in listing.stdout
    assert (folder / "work" / "pipe" / "video" / "export" / "fingerprint.json").is_file()


def wait_for_end(cluster, job: str, deadline: float) -> str:
    """The job's final status (STOPPED, SUCCEEDED or FAILED), polled until it has one."""
    status: list[str] = []

    def final() -> str | None:
        status[:] = svp(cluster, "jobs", "status", job, "--address", cluster.dashboard).stdout.split()
        return status[1] if len(status) > 1 and status[1] in ("STOPPED", "SUCCEEDED", "FAILED") else None

    return wait_until(final, deadline - time.monotonic(), lambda: f"end of job {job} (still {status[1:]})", 1)


def test_lost_node_then_stop_and_resubmit_resumes_with_identical_shards(
    cluster, undisturbed, tmp_path_factory
):
    # HEAVIEST PART of this module (see the docstring).
    first, *_ = undisturbed
    folder = tmp_path_factory.mktemp("job-b")
    pipeline = write_pipeline(folder, input=str(first / "raw" / "videos"))
    record = folder / "work" / "pipe" / "curated" / ".svp-steps" / "curate.json"
    side = cluster.live_side_raylet()
    side_node = cluster.side_node_id
    before = {t["task_id"] for t in curate_tasks(cluster)}
    job = submit(cluster, pipeline)

    # Kill the second node's raylet once one of this job's curation tasks was placed there, while curation
    # has not finished: running there (its worker dies with it) or finished there (its output blocks live
    # in that node's object store and are lost with it). Which of the two depends on the machine's load.
    deadline = time.monotonic() + 300

    def placed_on_side() -> bool:
        if any(t["node_id"] == side_node for t in curate_tasks(cluster) if t["task_id"] not in before):
            return True
        assert not record.is_file(), "curation finished before any of its tasks ran on the second node"
        return False

    wait_until(placed_on_side, 300, "curation task on the second node", interval=0.5)
    side.kill()

    # Once curation is recorded as finished, stop the job (it is filtering or training by then). Sources the
    # lost node took down are recorded as failed: the record then does not make the step finished.
    wait_until(
        record.is_file,
        deadline + 300 - time.monotonic(),
        lambda: (
            "record of the curation: "
            + svp(cluster, "jobs", "logs", job, "--address", cluster.dashboard).stdout[-3000:]
        ),
        interval=0.5,
    )
    stopped = svp(cluster, "jobs", "stop", job, "--address", cluster.dashboard)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    final = wait_for_end(cluster, job, time.monotonic() + 300)
    # Stopped; or, when the lost node took every source down, the job had already failed on its empty data
    # (training refuses an empty index) before the stop came: either way, submitting again must resume.
    assert ("stopping" in stopped.stdout and final == "STOPPED") or final == "FAILED", (stopped.stdout, final)

    again = submit(cluster, pipeline)
    logs = follow(cluster, again)
    curated_again = "curate: skipped" in logs or "sources failed in the run that wrote it" in logs
    assert curated_again and "video: trained" in logs, logs[-3000:]
    assert len(cluster.nodes()) == 1  # finished on the head alone
    assert shard_bytes(folder / "work" / "pipe" / "curated") == shard_bytes(
        first / "work" / "pipe" / "curated"
    )


def test_cluster_without_its_token_is_one_line(cluster, tmp_path):
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no-token")  # not the token of this machine's user either
    (tmp_path / "no-token").write_text("wrong-token\n")
    env["RAY_AUTH_MODE"] = "token"
    jobs = svp(cluster, "jobs", "list", "--address", cluster.dashboard, env=env)
    assert jobs.returncode == 2
    assert jobs.stderr.strip().splitlines() == [jobs.stderr.strip()] and "RAY_AUTH_TOKEN" in jobs.stderr
    assert "RAY_AUTH_TOKEN_PATH" in jobs.stderr  # the token file does as well as the variable
    # A request that passes the checks made before connecting (one input file), so the refusal is what fails.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(b"never decoded: the connection is refused first")
    curate = svp(
        cluster,
        "curate",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--address",
        cluster.gcs,
        env=env,
    )
    assert curate.returncode == 2, curate.stderr[-2000:]
    last = curate.stderr.strip().splitlines()[-1]
    assert last.startswith("svp: error:") and "RAY_AUTH_TOKEN" in last and "Traceback" not in curate.stderr


def test_without_address_a_private_ray_not_the_running_cluster(cluster, tmp_path):
    from curation.synth import make_corpus

    make_corpus(tmp_path / "raw", 1, seed=2, broken=False)
    before = len(curate_tasks(cluster))
    env = {k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"}
    done = svp(
        cluster,
        "curate",
        "--input",
        str(tmp_path / "raw" / "videos"),
        "--output",
        str(tmp_path / "out"),
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "clips.parquet").is_file()
    assert len(curate_tasks(cluster)) == before  # nothing ran on the cluster of this machine
