"""The disk a stage's checkpoints and export take, said before training when the work dir cannot hold them.

A save that runs out of space does not fail at once: Ray's report waits on the half-written checkpoint, far
into the run (on a 64 GiB GPU machine the 2B model's first save stalled for minutes). The sizes are known
from the parameter count before anything starts:

- a checkpoint holds the model states (bf16 on GPUs, fp32 on CPUs), ZeRO's fp32 master weights and Adam's
  two moments (12 bytes a parameter over all ranks), and the EMA in fp32 when the stage keeps one;
- Ray keeps `checkpoint.keep_last` of them and writes the next beside them before dropping the oldest;
- the export holds the last checkpoint in universal form (the same bytes, one file per tensor and state),
  consolidated fp32 weights and the EMA.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.config.schema import StageConfig

log = logging.getLogger("svp.training")
OPTIMIZER_BYTES = 12  # fp32 master copy + Adam's exp_avg and exp_avg_sq, per parameter
FP32_BYTES = 4


def stage_sizes(stage: StageConfig, use_gpu: bool) -> tuple[int, int]:
    """(bytes of one checkpoint, all ranks together; bytes of the export) of `stage`."""
    from model.info import count_parameters

    params = count_parameters(stage.model_config())
    ema = FP32_BYTES if stage.ema is not None else 0
    model_states = 2 if stage.deepspeed.bf16_enabled(use_gpu) else FP32_BYTES
    checkpoint = params * (model_states + OPTIMIZER_BYTES + ema)
    return checkpoint, checkpoint + params * FP32_BYTES  # the export: the last one, universal, + fp32 weights


def peak_bytes(checkpoint: int, export: int, keep_last: int, same_filesystem: bool) -> tuple[int, int]:
    """(bytes on the checkpoints' filesystem, bytes on the export's) at their peak. Ray writes the next
    checkpoint beside the `keep_last` it keeps; at the end the last ones stay beside the export. On one
    filesystem all of it lands on the first (the second is then 0)."""
    saves = (keep_last + 1) * checkpoint
    if same_filesystem:
        return max(saves, keep_last * checkpoint + export), 0
    return saves, export


def disk_shortfall(
    stage: StageConfig, use_gpu: bool, free_bytes: int, export_free_bytes: int | None = None
) -> str | None:
    """A one-line warning when the free space cannot hold the stage's checkpoints and export at their peak,
    else None. `free_bytes` is the checkpoints' filesystem's; `export_free_bytes` the export's when that is
    another filesystem (None: the same one, which then holds `keep_last` checkpoints and the next one being
    written, or `keep_last` and the export)."""
    checkpoint, export = stage_sizes(stage, use_gpu)
    kept = stage.checkpoint.keep_last
    saves, exported = peak_bytes(checkpoint, export, kept, same_filesystem=export_free_bytes is None)
    if export_free_bytes is None:
        if saves <= free_bytes:
            return None
        need, where = saves, f"the work dir has {_size(free_bytes)} free"
    elif saves <= free_bytes and exported <= export_free_bytes:
        return None
    else:
        need = saves if saves > free_bytes else exported
        where = (
            f"their folder has {_size(free_bytes)} free and the export's {_size(export_free_bytes)} "
            f"(need {_size(saves)} and {_size(exported)})"
        )
    return (
        f"stage {stage.name}: its checkpoints ({_size(checkpoint)} each, keep_last {kept} + the one being "
        f"written) and export need up to {_size(need)}, and {where}: a "
        "save will run out of space (free some, lower checkpoint.keep_last, or use another --work-dir)"
    )


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _existing(path: Path) -> Path:
    """`path`, or the nearest folder above it that exists (a first run's folders are made later, on the same
    filesystem as that one unless a link says otherwise)."""
    path = Path(path)
    while not path.exists():
        path = path.parent
    return path


def warn_if_disk_short(stage: StageConfig, use_gpu: bool, checkpoints_dir: Path, export_dir: Path) -> None:
    """Warn when the filesystems of `checkpoints_dir` (Ray's storage) and `export_dir` cannot hold what the
    stage writes there; they are one filesystem unless a link or a mount puts one elsewhere (checkpoints in
    /dev/shm on a one-GPU machine whose disk holds only the export)."""
    checkpoints, export = _existing(checkpoints_dir), _existing(export_dir)
    free = shutil.disk_usage(checkpoints).free
    export_free = None
    if checkpoints.stat().st_dev != export.stat().st_dev:
        export_free = shutil.disk_usage(export).free
    message = disk_shortfall(stage, use_gpu, free, export_free)
    if message is not None:
        log.warning(message)
