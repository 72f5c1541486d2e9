"""A stage's progress on the driver's console: rank 0 publishes, the driver draws one bar per stage.

Ray Train V2 reports to the driver only at checkpoints, and the driver may run on another machine than the
workers (a Ray job, a laptop joined with `--address`), so rank 0 publishes its progress to a small named Ray
actor (`ProgressBoard`) that the driver made and polls (`stage_progress`). Publishing is a fire-and-forget
actor call at each log step (`log_every`), with numbers rank 0 has already read: it adds no sync to the step.

On a terminal the driver draws a rich progress bar (step/total, loss, samples/s, ETA); elsewhere (a Ray job's
log, a pipe) it prints a plain line about every tenth of the stage.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

POLL_S = 0.5
PLAIN_LINES = 10  # plain lines per stage when the console is not a terminal


class ProgressBoard:
    """The latest progress of one stage (a Ray actor: `ray.remote(ProgressBoard)`)."""

    def __init__(self) -> None:
        self._latest: dict[str, Any] | None = None

    def publish(self, update: dict[str, Any]) -> None:
        self._latest = update

    def latest(self) -> dict[str, Any] | None:
        return self._latest


@dataclass(frozen=True)
class BoardAddress:
    """How rank 0 finds the driver's board: a Ray actor name in a namespace."""

    name: str
    namespace: str


class ProgressPublisher:
    """Rank 0's side: `publish(step, total, metrics)` after each log step; never fails the training."""

    def __init__(self, address: BoardAddress | None) -> None:
        self._board = None
        if address is None:
            return
        import ray

        try:
            self._board = ray.get_actor(address.name, namespace=address.namespace)
        except ValueError:  # the driver is gone or made none: train without a progress display
            self._board = None

    def publish(self, step: int, total: int, metrics: dict[str, float]) -> None:
        if self._board is None:
            return
        update = {
            "step": step,
            "total": total,
            "loss": metrics.get("train/loss"),
            "samples_per_s": metrics.get("perf/samples_per_s"),
        }
        with contextlib.suppress(Exception):  # a lost actor must not stop training
            self._board.publish.remote(update)


@contextlib.contextmanager
def stage_progress(label: str, total: int, stream: Any = None) -> Iterator[BoardAddress]:
    """Make the board, draw its progress until the block ends, then remove it. Yields its address."""
    import ray

    address = BoardAddress(f"svp-progress-{uuid.uuid4().hex[:12]}", ray.get_runtime_context().namespace)
    board = ray.remote(num_cpus=0)(ProgressBoard).options(name=address.name, namespace=address.namespace)
    actor = board.remote()
    stream = stream or sys.stderr
    view = _RichView(label, total, stream) if stream.isatty() else _PlainView(label, total, stream)
    stop = threading.Event()
    poller = threading.Thread(target=_poll, args=(actor, view, stop), daemon=True, name="svp-progress")
    poller.start()
    try:
        yield address
    finally:
        stop.set()
        poller.join(timeout=2)  # a daemon thread: an interrupted driver does not wait for its last poll
        view.close()
        with contextlib.suppress(Exception):
            ray.kill(actor)


def _poll(actor: Any, view: Any, stop: threading.Event) -> None:
    import ray

    last_step = None
    while True:
        stopping = stop.wait(POLL_S)
        try:
            update = ray.get(actor.latest.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - Ray going down with the driver: nothing more to show
            return
        if update is not None and update["step"] != last_step:
            last_step = update["step"]
            view.show(update)
        if stopping:
            return


def _format(update: dict[str, Any]) -> str:
    parts = []
    if update.get("loss") is not None:
        parts.append(f"loss {update['loss']:.4f}")
    if update.get("samples_per_s") is not None:
        parts.append(f"{update['samples_per_s']:.1f} samples/s")
    return "  ".join(parts)


class _RichView:
    def __init__(self, label: str, total: int, stream: Any) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=stream),
        )
        self.task = self.progress.add_task(label, total=total, stats="")
        self.progress.start()

    def show(self, update: dict[str, Any]) -> None:
        self.progress.update(self.task, completed=update["step"], stats=_format(update))

    def close(self) -> None:
        self.progress.stop()


class _PlainView:
    def __init__(self, label: str, total: int, stream: Any) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.every = max(1, total // PLAIN_LINES)
        self.first: tuple[int, float] | None = None  # (step, time) of the first update seen, for the ETA
        self.printed = 0

    def show(self, update: dict[str, Any]) -> None:
        step, now = update["step"], time.monotonic()
        if self.first is None:
            self.first = (step, now)
        if step < self.total and step - self.printed < self.every:
            return
        self.printed = step
        eta = ""
        done, started = step - self.first[0], self.first[1]
        if done > 0 and step < self.total:
            eta = f"  ETA {_clock((self.total - step) * (now - started) / done)}"
        stats = _format(update)
        print(f"{self.label}: step {step}/{self.total}  {stats}{eta}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
