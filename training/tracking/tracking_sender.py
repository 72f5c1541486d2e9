"""The background sender behind `training.tracking.runs.RunLogger`: batched, and tolerant of a tracking server that
goes away.

The training loop only appends to a bounded buffer; one daemon thread sends it with `MlflowClient.log_batch`
(at most 1000 values a call, MLflow's limit) every `flush_every_steps` logged steps or `flush_every_s` seconds,
whichever comes first, and when asked (`flush`, `close`). When a send fails (server down, network), the batch
goes back to the front of the buffer and the thread retries with exponential backoff (1 s doubling to 60 s),
warning once per outage; when the buffer exceeds `max_buffered` values the oldest are dropped, with one warning.
Artifacts are uploaded by the same thread from their local files, which stay where they are; one that cannot be
uploaded by `close` is reported with its local path. Nothing here raises into the training loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

log = logging.getLogger("svp.training")

MAX_METRICS_PER_CALL = 1000  # MLflow's limit on metrics in one log_batch
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0


@dataclass(frozen=True)
class SenderLimits:
    flush_every_steps: int = 100  # send once this many distinct steps are buffered
    flush_every_s: float = 10.0  # ... or this long after the last send
    max_buffered: int = 100_000  # metric values kept while the server is away; the oldest go beyond it
    flush_wait_s: float = 10.0  # how long `flush` waits for a server that answers
    close_timeout_s: float = 120.0  # how long `close` waits for the server before giving up on what is left


class BufferedSender:
    """Sends one run's metrics and artifacts from a daemon thread (see the module docstring)."""

    def __init__(self, client: MlflowClient, run_id: str, limits: SenderLimits) -> None:
        self.client = client
        self.run_id = run_id
        self.limits = limits
        self._metrics: deque[Metric] = deque()
        self._artifacts: deque[tuple[Path, str | None]] = deque()
        self._wake = threading.Condition()
        self._steps_buffered: set[int] = set()
        self._queued = 0  # values (and artifacts) ever queued
        self._done = 0  # ... and sent or dropped
        self._dropped = 0
        self._outage_since: float | None = None
        self._flush_requested = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"mlflow-sender-{run_id[:8]}", daemon=True)
        self._thread.start()

    # --- called from the training loop: never blocks on the server, never raises ---------------------------

    def add_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v == v]  # drop NaN
        with self._wake:
            self._metrics.extend(batch)
            self._queued += len(batch)
            self._steps_buffered.add(step)
            self._drop_oldest_beyond_bound()
            if len(self._steps_buffered) >= self.limits.flush_every_steps:
                self._wake.notify()

    def add_artifact(self, path: Path, artifact_path: str | None) -> None:
        with self._wake:
            self._artifacts.append((Path(path), artifact_path))
            self._queued += 1
            self._wake.notify()

    def flush(self) -> None:
        """Send what is buffered now (a checkpoint is a natural moment). While the server answers, wait for it
        (up to `flush_wait_s`), so that a worker killed after the checkpoint has not lost the metrics the
        checkpoint covers; during an outage, return at once."""
        deadline = time.monotonic() + self.limits.flush_wait_s
        with self._wake:
            target = self._queued
            self._flush_requested = True
            self._wake.notify()
            while self._done < target and self._outage_since is None and time.monotonic() < deadline:
                self._wake.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))

    def close(self, timeout_s: float | None = None) -> bool:
        """Send what is buffered, waiting up to `timeout_s` (default `close_timeout_s`); warn about what could
        not be sent. True when everything queued was sent (or dropped with a warning earlier)."""
        deadline = time.monotonic() + (self.limits.close_timeout_s if timeout_s is None else timeout_s)
        with self._wake:
            target = self._queued
            self._closing = True
            self._wake.notify()
            while self._done < target and time.monotonic() < deadline:
                self._wake.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            left_artifacts = list(self._artifacts)
            left_metrics = max(0, target - self._done - len(left_artifacts))  # in flight counts as unsent
            complete = self._done >= target
        if not complete:
            self._warn_unsent(left_metrics, left_artifacts)
        return complete

    # --- the sender thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        last_send = time.monotonic()
        while True:
            with self._wake:
                while not self._send_due(last_send):
                    if self._closing and not self._metrics and not self._artifacts:
                        return  # closed and everything sent
                    self._wake.wait(timeout=1.0)
                self._steps_buffered.clear()
                self._flush_requested = False
            if self._send_all():
                last_send, backoff = time.monotonic(), BACKOFF_FIRST_S
                continue
            with self._wake:  # failed: wait before the next attempt (`close` wakes it early)
                self._wake.wait(timeout=backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _send_due(self, last_send: float) -> bool:
        """Called with the lock held."""
        if not self._metrics and not self._artifacts:
            return False
        return (
            self._closing
            or self._flush_requested
            or bool(self._artifacts)
            or len(self._steps_buffered) >= self.limits.flush_every_steps
            or time.monotonic() - last_send >= self.limits.flush_every_s
        )

    def _send_all(self) -> bool:
        """Send everything buffered; False at the first failure (what failed stays at the front)."""
        while True:
            with self._wake:
                batch = [
                    self._metrics.popleft() for _ in range(min(MAX_METRICS_PER_CALL, len(self._metrics)))
                ]
                artifact = self._artifacts.popleft() if not batch and self._artifacts else None
            if not batch and artifact is None:
                return True
            try:
                if batch:
                    self.client.log_batch(self.run_id, metrics=batch)
                else:
                    self.client.log_artifact(self.run_id, str(artifact[0]), artifact[1])
            except Exception as err:  # the server is away: keep it for the next attempt
                with self._wake:
                    if batch:
                        self._metrics.extendleft(reversed(batch))
                        self._drop_oldest_beyond_bound()
                    else:
                        self._artifacts.appendleft(artifact)
                self._note_outage(err)
                return False
            self._note_sent(len(batch) if batch else 1)

    def _note_sent(self, count: int) -> None:
        with self._wake:
            self._done += count
            back = self._outage_since
            self._outage_since = None
            self._wake.notify_all()
        if back is not None:
            log.warning(
                f"MLflow: the tracking server is reachable again after {time.monotonic() - back:.0f} s; "
                f"sending the buffered metrics of run {self.run_id}"
            )

    def _note_outage(self, err: Exception) -> None:
        with self._wake:
            first = self._outage_since is None
            if first:
                self._outage_since = time.monotonic()
            pending = len(self._metrics)
            self._wake.notify_all()  # a waiting `flush` stops waiting
        if first:
            log.warning(
                f"MLflow: cannot reach the tracking server for run {self.run_id} ({type(err).__name__}: "
                f"{str(err)[:300]}); training goes on, {pending} metric values are buffered (at most "
                f"{self.limits.max_buffered}) and sending is retried with backoff"
            )

    def _drop_oldest_beyond_bound(self) -> None:
        """Called with the lock held."""
        excess = len(self._metrics) - self.limits.max_buffered
        if excess <= 0:
            return
        for _ in range(excess):
            self._metrics.popleft()
        self._done += excess
        if self._dropped == 0:
            log.warning(
                f"MLflow: more than {self.limits.max_buffered} metric values waiting for the tracking server; "
                f"dropping the oldest of run {self.run_id} (this is said once)"
            )
        self._dropped += excess

    def _warn_unsent(self, metrics: int, artifacts: list[tuple[Path, str | None]]) -> None:
        where = "; ".join(f"{path} (for {artifact_path or '.'})" for path, artifact_path in artifacts)
        log.warning(
            f"MLflow: the tracking server did not take everything for run {self.run_id}: {metrics} metric "
            f"values are lost"
            + (
                f", and {len(artifacts)} artifacts were not uploaded, their local files are kept: {where}"
                if artifacts
                else ""
            )
        )
