"""What the driver does to a stage's Ray run folder before Ray Train resumes it.

Ray Train V2 has no `restore`: the same run name and storage path is the resume. The run name holds the
stage's fingerprint, so a checkpoint is only ever resumed by a run of the same inputs; checkpoints under
another fingerprint are said not to be resumed, and why. The latest checkpoint, when written by another world
size or ZeRO stage, is converted to a universal checkpoint in place, which the workers then load.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from training.worker.checkpoints import convert_to_universal, ds_tag, read_state

log = logging.getLogger("svp.training")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")


def latest_checkpoint(run_dir: Path) -> Path | None:
    from ray.train import Result

    if not (run_dir / "checkpoint_manager_snapshot.json").is_file():
        return None
    checkpoint = Result.from_path(str(run_dir)).checkpoint
    return Path(checkpoint.path) if checkpoint is not None else None


def prepare_resume(run_dir: Path, workers: int, zero_stage: int) -> None:
    """Convert the latest checkpoint to universal when the world size or ZeRO stage changed."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return
    state = read_state(latest)
    if state.world_size != workers or state.zero_stage != zero_stage:
        log.warning(
            f"{latest.name}: written by {state.world_size} workers (ZeRO-{state.zero_stage}), resuming on "
            f"{workers} (ZeRO-{zero_stage}): converting to a universal checkpoint"
        )
        with tqdm_off_if_asked():
            convert_to_universal(latest / "ds", ds_tag(state.step))


def other_fingerprints(storage: Path, prefix: str, fingerprint: str) -> Iterator[tuple[Path, str]]:
    """(Ray run folder, its fingerprint) of each run of the stage (`prefix` + fingerprint) under `storage`
    made from other inputs and holding a checkpoint: what a run of `fingerprint` does not resume."""
    for folder in sorted(storage.glob(prefix + "*")):
        old = folder.name[len(prefix) :]
        if old != fingerprint and _FINGERPRINT.fullmatch(old) and latest_checkpoint(folder) is not None:
            yield folder, old


@contextlib.contextmanager
def tqdm_off_if_asked() -> Iterator[None]:
    """With TQDM_DISABLE=1 (the CLI's quiet console), DeepSpeed's bars while a checkpoint is converted or the
    export is built stay off the console: tqdm reads the variable when imported, and this process imported it
    (with torch) before the CLI set it. For this call only: patching tqdm for the whole process broke Ctrl-C
    in Ray Data's bars."""
    import tqdm.std

    if os.environ.get("TQDM_DISABLE") != "1":
        yield
        return
    original = tqdm.std.tqdm.__init__
    tqdm.std.tqdm.__init__ = functools.partialmethod(original, disable=True)
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = original
