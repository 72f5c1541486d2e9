"""Where the 2B stage's checkpoints and export go on a machine whose disk cannot hold them all.

A one-GPU machine's 64 GB disk holds the weights (~15 GB), the corpus and one of the 2B model's checkpoints
(37 GB with the EMA) but not the two that exist while the next is written, nor the export (45 GB) beside them.
Memory (/dev/shm, a tmpfs) takes what the disk cannot. The sizes come from the parameter count before anything
starts (`training.driver.disk_budget.stage_sizes`), so a run that cannot fit stops here, in one line, not in
a save that stalls half-written far into training.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from training.driver.disk_budget import peak_bytes

GB = 1e9
MARGIN = 4 * GB  # logs, MLflow, the staging files of a rank, rounding in the size estimate
KEEP_LAST = 1  # the recipe's checkpoint.keep_last: one 2B checkpoint at a time
MEMORY_FOR_PROCESSES = 24 * GB  # what files in memory must leave to the training and export processes


@dataclass(frozen=True)
class Placement:
    """Where Ray's run folder (checkpoints) and the stage folder (export) live, and whether the EMA is kept."""

    checkpoints: str  # "disk" or "memory"
    export: str
    ema: bool
    checkpoint_gb: float
    export_gb: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def choose(sizes: dict[bool, tuple[int, int]], disk_free: int, memory_room: int) -> Placement | None:
    """The first placement that fits, EMA kept where possible: `sizes[ema]` is (one checkpoint, the export)
    in bytes. While the next checkpoint is written two exist; at the end the last one stays beside the
    export (`training.driver.disk_budget.peak_bytes`, at the recipe's KEEP_LAST). `memory_room` is what
    files in memory may take (`memory_room`)."""
    for ema in (True, False):
        checkpoint, export = sizes[ema]
        for where_checkpoints, where_export in (("disk", "disk"), ("memory", "disk"), ("memory", "memory")):
            same = where_checkpoints == where_export
            need = {"disk": 0, "memory": 0}
            on_checkpoints, on_export = peak_bytes(checkpoint, export, KEEP_LAST, same)
            need[where_checkpoints] += on_checkpoints
            need[where_export] += on_export
            if need["disk"] + MARGIN <= disk_free and need["memory"] <= memory_room:
                return Placement(where_checkpoints, where_export, ema, round(checkpoint / GB, 1),
                                 round(export / GB, 1))  # fmt: skip
    return None


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free if path.exists() else 0


def memory_room(tmpfs: Path) -> int:
    """What files in the tmpfs `tmpfs` may take: its free space, less what the processes would then lack of
    MEMORY_FOR_PROCESSES (a tmpfs of half the RAM leaves them the other half; one the size of the RAM, not)."""
    if not tmpfs.exists():
        return 0
    usage = shutil.disk_usage(tmpfs)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(0, usage.free - max(0, int(MEMORY_FOR_PROCESSES) - (ram - usage.total)))
