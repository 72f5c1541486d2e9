"""The `svp train` runs of benchmarks/two_gpu_training.py and the figures read back from what they wrote.

`TrainRun` starts the real CLI (`python -m orchestration.cli train …`) as a child process, keeps its console in
a log file, and watches the stage's MLflow run (the sqlite store in the work dir) while it trains, so the
recipe can SIGKILL one Ray Train worker process (found in the process table among the CLI's descendants) or
interrupt the driver (SIGINT, as Ctrl-C) at a chosen step. `stage_history` reads every logged step back with
its timestamp and splits it into attempts at each `train/resumed_from_step` (a restart after a kill, or a
rerun).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from training.tracking.runs import TAG_STAGE

_KEYS = (
    "train/loss",
    "perf/step_time_s",
    "perf/tokens_per_s",
    "perf/mfu",
    "perf/checkpoint_save_s",
    "perf/checkpoint_load_s",
    "train/resumed_from_step",
)
# svp's own console lines worth keeping in the JSON (the rest stays in the log file).
_ESSENTIAL = ("stage ", "resum", "convert", "export", "Ray workers' logs", "svp: ", "universal", "error")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class TrainRun:
    """One `svp train` invocation (see the module docstring)."""

    label: str
    argv: list[str]
    log_path: Path
    tracking_uri: str
    experiment: str
    stage: str
    started: float = 0.0
    ended: float = 0.0
    returncode: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_bytes: dict[str, int] = field(default_factory=dict)
    _proc: subprocess.Popen | None = None

    def start(self) -> None:
        say(f"{self.label}: {' '.join(self.argv[2:])}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        self.started = time.time()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float) -> int:
        self.returncode = self._proc.wait(timeout=timeout)
        self.ended = time.time()
        say(f"{self.label}: exit status {self.returncode} after {self.ended - self.started:.1f} s")
        return self.returncode

    def wait_for(self, predicate, what: str, timeout: float) -> None:
        """Poll `predicate(history)` every second until true; fails if the run ends or time runs out."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.running():
                raise RuntimeError(f"{self.label}: svp train ended before {what} (see {self.log_path})")
            if predicate(stage_history(self.tracking_uri, self.experiment, self.stage)):
                return
            time.sleep(1.0)
        raise TimeoutError(f"{self.label}: no {what} within {timeout:.0f} s (see {self.log_path})")

    def train_workers(self) -> list[psutil.Process]:
        """The Ray Train worker processes among this CLI's descendants (a private local Ray).

        Processes a worker forks keep its title (torch.compile's compile pool: on 2 H200s a first run found
        six "RayTrainWorker"s for two workers, killed a compile helper, and the stage never noticed), so only
        those whose parent is not itself one count.
        """
        titled = {}
        for proc in psutil.Process(self._proc.pid).children(recursive=True):
            try:
                if "RayTrainWorker" in " ".join(proc.cmdline()):
                    titled[proc.pid] = proc
            except psutil.Error:
                continue
        workers = []
        for proc in titled.values():
            try:
                if proc.ppid() not in titled:
                    workers.append(proc)
            except psutil.Error:
                continue
        return sorted(workers, key=lambda p: p.pid)

    def kill_worker(self, step_seen: int) -> dict[str, Any]:
        """SIGKILL one training worker process (the last of them by pid) and record which."""
        workers = self.train_workers()
        if not workers:
            raise RuntimeError(f"{self.label}: no RayTrainWorker process found to kill")
        victim = workers[-1]
        event = {
            "event": "SIGKILL",
            "pid": victim.pid,
            "cmdline": " ".join(victim.cmdline())[:200],
            "workers_seen": [p.pid for p in workers],
            "gpu": _gpu_of(victim.pid),
            "last_step_logged": step_seen,
            "time": time.time(),
        }
        os.kill(victim.pid, signal.SIGKILL)
        say(
            f"{self.label}: SIGKILL worker pid {victim.pid} (of {event['workers_seen']}) after step {step_seen}"
        )
        self.events.append(event)
        return event

    def interrupt(self, step_seen: int) -> None:
        """SIGINT to the CLI alone (Ctrl-C): it stops the stage without exporting and exits 130."""
        self._proc.send_signal(signal.SIGINT)
        say(f"{self.label}: SIGINT to svp train after step {step_seen}")
        self.events.append({"event": "SIGINT", "last_step_logged": step_seen, "time": time.time()})

    def stop(self) -> None:
        """If still running (the recipe failed): Ctrl-C, so svp stops its private Ray; SIGKILL after 2 min."""
        if not self.running():
            return
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def to_json(self) -> dict[str, Any]:
        """What a later run of the recipe needs of a finished run (`TrainRun.from_json`)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in vars(self).items() if k != "_proc"}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> TrainRun:
        return cls(**{**saved, "log_path": Path(saved["log_path"])})

    def essential_lines(self) -> list[str]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line[:300] for line in lines if any(key in line for key in _ESSENTIAL)][-60:]


def _gpu_of(pid: int) -> str | None:
    """The GPU a process holds memory on (nvidia-smi), when there is one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,gpu_uuid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if parts and parts[0] == str(pid):
            return parts[1]
    return None


def svp_train_argv(pipeline: Path, work_dir: Path, workers: int, gpus: float, variables: dict) -> list[str]:
    argv = [sys.executable, "-m", "orchestration.cli", "train", str(pipeline), "--work-dir", str(work_dir)]
    argv += ["--workers", str(workers), "--gpus-per-worker", str(gpus)]
    argv += ["--log-every", "1"]  # every step's figures (the kill waits for the step after a checkpoint)
    for name, value in variables.items():
        argv += ["--var", f"{name}={value}"]
    return argv


def stage_history(tracking_uri: str, experiment: str, stage: str) -> list[dict[str, Any]]:
    """Every logged step of the stage's MLflow run in time order: {step, time, attempt, key: value, …}.

    Attempt 0 is the first start; each `train/resumed_from_step` begins the next one.
    """
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///") and not _store_ready(
        Path(tracking_uri[len("sqlite:///") :]), stage
    ):
        return []  # opening it now would race with svp creating and migrating it
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_STAGE}` = '{stage}'")
    if not runs:
        return []
    run_id = runs[0].info.run_id
    points: dict[tuple[int, int], dict[str, Any]] = {}
    resumes = sorted(m.timestamp for m in client.get_metric_history(run_id, "train/resumed_from_step"))
    for key in _KEYS:
        for metric in client.get_metric_history(run_id, key):
            attempt = sum(1 for t in resumes if t <= metric.timestamp)
            row = points.setdefault((attempt, metric.step), {"attempt": attempt, "step": metric.step})
            row[key] = metric.value
            row["time"] = max(row.get("time", 0), metric.timestamp / 1000)
    return sorted(points.values(), key=lambda r: (r["attempt"], r["step"]))


def _store_ready(db: Path, stage: str) -> bool:
    """svp has created the sqlite store and the stage's run in it (read-only look, no MLflow)."""
    if not db.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            query = "SELECT 1 FROM tags WHERE key = ? AND value = ? LIMIT 1"
            return conn.execute(query, (TAG_STAGE, stage)).fetchone() is not None
    except sqlite3.Error:  # tables not there yet, or locked
        return False


def last_step(history: list[dict[str, Any]], attempt: int | None = None) -> int:
    steps = [r["step"] for r in history if "train/loss" in r and (attempt is None or r["attempt"] == attempt)]
    return max(steps, default=0)


def no_step_lost(losses: list[dict[int, float]], resumed_from: int | None) -> bool:
    """Of a run killed once (`losses[a]`: step → loss of attempt a): the second attempt went on from the step
    after the checkpoint it resumed from, and the two together logged every step the trainer logs (each
    `interval`-th: every step on the CPU, every 10th on GPUs; inferred from the steps) from the first to the
    last. Nothing was lost or skipped; the steps between the checkpoint and the kill were trained twice."""
    if resumed_from is None or not losses[1]:
        return False
    logged = sorted(set(losses[0]) | set(losses[1]))
    interval = min((b - a for a, b in zip(logged, logged[1:], strict=False)), default=1)
    first_after = (resumed_from // interval + 1) * interval
    return min(losses[1]) == first_after and logged == list(range(interval, logged[-1] + 1, interval))


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def checkpoint_sizes(ray_dir: Path) -> dict[str, int]:
    """Bytes of every checkpoint folder of the stage's Ray runs (a universal conversion included)."""
    return {p.name: folder_bytes(p) for p in sorted(ray_dir.glob("*/checkpoint_*")) if p.is_dir()}
