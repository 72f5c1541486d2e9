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


def disk_shortfall(stage: StageConfig, use_gpu: bool, free_bytes: int) -> str | None:
    """A one-line warning when `free_bytes` cannot hold the stage's checkpoints and export at their peak
    (`keep_last` checkpoints and the next one being written, or `keep_last` and the export), else None."""
    checkpoint, export = stage_sizes(stage, use_gpu)
    kept = stage.checkpoint.keep_last
    need = max((kept + 1) * checkpoint, kept * checkpoint + export)
    if need <= free_bytes:
        return None
    return (
        f"stage {stage.name}: its checkpoints ({_size(checkpoint)} each, keep_last {kept} + the one being "
        f"written) and export need up to {_size(need)}, and the work dir has {_size(free_bytes)} free: a "
        "save will run out of space (free some, lower checkpoint.keep_last, or use another --work-dir)"
    )


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def warn_if_disk_short(stage: StageConfig, use_gpu: bool, work_dir: Path) -> None:
    existing = Path(work_dir)
    while not existing.exists():  # the work dir of a first run is made later: its filesystem is the same
        existing = existing.parent
    message = disk_shortfall(stage, use_gpu, shutil.disk_usage(existing).free)
    if message is not None:
        log.warning(message)
