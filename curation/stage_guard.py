"""Telling a broken scorer stage from bad inputs.

The curation job lets a block fail without failing the job (a source whose clips a scorer cannot handle is
recorded as failed, and the rest goes on). A scorer with a bug, or misconfigured, fails on every batch:
left alone, that turns into "every source failed". So each scorer runs inside `GuardedStage`, which
reports every batch's outcome to a `StageHealth` actor; after `ray.max_consecutive_stage_failures` failed
batches in a row of one stage (no success in between, across all its actors) the driver stops the job with
that stage's real traceback (`StageBrokenError`), and nothing of the failed sources is recorded as done.
"""

from __future__ import annotations

import time
import traceback

import ray


class StageBrokenError(RuntimeError):
    """A scorer stage failed on every one of its last N batches: a bug or a bad setting, not bad data."""


@ray.remote(num_cpus=0)
class StageHealth:
    """Consecutive failed batches of each stage, and the traceback of its latest failure."""

    def __init__(self) -> None:
        self.failures: dict[str, int] = {}
        self.last_error: dict[str, str] = {}
        self.work: dict[str, dict[str, float]] = {}

    def succeeded(self, stage: str, rows: int = 0, seconds: float = 0.0) -> None:
        self.failures[stage] = 0
        work = self.work.setdefault(stage, {"batches": 0, "rows": 0, "busy_s": 0.0})
        work["batches"] += 1
        work["rows"] += rows
        work["busy_s"] += seconds

    def stage_work(self) -> dict[str, dict[str, float]]:
        """Per stage: batches and rows scored, and the seconds its actors spent in them (summed over actors):
        with the job's wall time, this says which stage set the pace and which waited."""
        return {stage: dict(work) for stage, work in self.work.items()}

    def failed(self, stage: str, error: str) -> None:
        self.failures[stage] = self.failures.get(stage, 0) + 1
        self.last_error[stage] = error

    def broken(self, limit: int) -> tuple[str, int, str] | None:
        """(stage, failures in a row, traceback) of a stage that failed `limit` batches in a row, else None."""
        for stage, n in sorted(self.failures.items()):
            if n >= limit:
                return stage, n, self.last_error[stage]
        return None


def raise_if_broken(health: ray.actor.ActorHandle, limit: int) -> None:
    found = ray.get(health.broken.remote(limit))
    if found is not None:
        stage, n, error = found
        raise StageBrokenError(
            f"scorer stage {stage!r} failed on {n} batches in a row (ray.max_consecutive_stage_failures="
            f"{limit}): a bug or a bad setting, not bad inputs. Its last error, in the scorer actor:\n{error}"
        )


class GuardedStage:
    """A scorer stage (a Ray Data callable class) whose every batch outcome is reported to `StageHealth`."""

    def __init__(self, stage_cls: type, name: str, config: object, health: ray.actor.ActorHandle) -> None:
        self.stage = stage_cls(config)
        self.name = name
        self.health = health

    def __call__(self, batch: dict) -> dict:
        start = time.perf_counter()
        try:
            out = self.stage(batch)
        except Exception:
            # Waited for: the driver must see the count once this block's failure reaches it.
            ray.get(self.health.failed.remote(self.name, traceback.format_exc()))
            raise
        rows = len(next(iter(batch.values()))) if batch else 0
        ray.get(self.health.succeeded.remote(self.name, rows, time.perf_counter() - start))
        return out
