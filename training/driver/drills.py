"""Reliability drills: kill a training worker at a chosen step, to prove that Ray restarts it and the stage
ends exactly where an uninterrupted one does.

Test-only, and off unless switched on on purpose: `run_stage(fault=…)` refuses a `FaultInjection` outside a
`fault_drills_enabled()` block (`with fault_drills(): …` in the driver process). No environment variable or
config key can turn it on, so a production run never carries one; the worker's hot path only checks that
its job has no fault.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_ENABLED = {"on": False}


@dataclass
class FaultInjection:
    """Kill one worker process with SIGKILL at a step, once (a marker file remembers it happened).

    A real process death, which Ray must detect and recover from. `during="save"` kills it inside that
    step's checkpoint save, after the staged copy is written and before it is reported (the save is lost;
    its staging folder is left behind).
    """

    kill_at_step: int
    rank: int
    marker: str
    during: str = "step"  # "step" (before the step runs) or "save"


@contextlib.contextmanager
def fault_drills() -> Iterator[None]:
    """Allow `FaultInjection`s for the duration of the block (tests and reliability drills only)."""
    previous = _ENABLED["on"]
    _ENABLED["on"] = True
    try:
        yield
    finally:
        _ENABLED["on"] = previous


def check_drill_allowed(fault: FaultInjection | None) -> None:
    if fault is not None and not _ENABLED["on"]:
        raise RuntimeError(
            "a FaultInjection kills training workers; it is for tests and drills only: "
            "run it inside `with training.driver.drills.fault_drills():`"
        )


def maybe_die(fault: FaultInjection, rank: int, step: int, during: str = "step") -> None:
    """SIGKILL this process when `fault` names this rank, step and phase, the first time only."""
    if fault.rank != rank or fault.kill_at_step != step or fault.during != during:
        return
    marker = Path(fault.marker)
    if marker.exists():
        return
    marker.write_text(f"killed rank {rank} at step {step} during {during} (pid {os.getpid()})\n")
    os.kill(os.getpid(), signal.SIGKILL)
