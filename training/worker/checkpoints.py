"""Stage checkpoints (resume a stage) and the stage export (hand a stage's weights to the next one).

Layout of one Ray Train checkpoint (`{work_dir}/ray/{pipeline}-{stage}/checkpoint_step00000042/`), merged by
Ray from what every rank wrote:

    ds/latest, ds/step00000042/…                DeepSpeed: model states (rank 0), ZeRO optimizer partitions (every rank)
    ds/step00000042_universal/, ds/latest_universal   only after a world-size change (see `convert_to_universal`)
    data/rank00000.json …                        each rank's data position (DataPosition.to_dict())
    svp_state.json                               step, world size, ZeRO stage, skipped steps, MLflow run id
    ema.safetensors                              the EMA (rank 0), when the stage keeps one

A plain ZeRO checkpoint only resumes on the world size that wrote it; a universal one resumes on any. The
driver converts the latest checkpoint in place when it sees the world size change (`training.driver.stage_run`), and
every stage ends with an export folder holding a universal checkpoint plus consolidated fp32 weights:

    export/model.safetensors, export/config.json   `model.pretrained` format: init_from and `svp generate` read it
    export/ema.safetensors                         EMA weights (same keys), when kept
    export/universal/step…_universal, latest_universal
    export/stage.json                              step, stage fingerprint, source checkpoint

The export folder is renamed into place only when complete, so "export present" means "stage finished".
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from core.atomic import replace_folder
from training.errors import WorldSizeMismatchError

DS_DIR = "ds"
DATA_DIR = "data"
STATE_FILE = "svp_state.json"
EMA_FILE = "ema.safetensors"
EXPORT_STATE_FILE = "stage.json"
UNIVERSAL_DIR = "universal"
STAGING_DIR = ".staging"  # inside the Ray run folder: where each rank builds a checkpoint before reporting it
RAY_STORAGE_MARKER = ".validate_storage_marker"  # Ray Train writes it in the run folder when the run starts


def ds_tag(step: int) -> str:
    return f"step{step:08d}"


@dataclass
class TrainState:
    """What a stage needs besides DeepSpeed's own state to continue exactly where it stopped."""

    step: int
    world_size: int
    zero_stage: int
    skipped_steps: int = 0
    samples_seen: int = 0
    mlflow_run_id: str | None = None
    stage_fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainState:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _universal_client_state() -> dict[str, Any]:
    # ds_to_universal refuses checkpoints whose client did not declare this.
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    return {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}


def staging_dir(run_dir: Path | str) -> Path:
    """Where the ranks of one Ray run stage their checkpoints (`{run_dir}/.staging/rank00000/…`).

    Under the run's own folder, not the system temp dir: a worker killed while saving leaves its copy where
    the next attempt finds and removes it (`clear_staging`), instead of leaking tens of GB per kill on a node.
    """
    return Path(run_dir) / STAGING_DIR


def rank_staging_dir(root: Path | str, rank: int) -> Path:
    return Path(root) / f"rank{rank:05d}"


def move_into_run(staged: Path, run_dir: Path, checkpoint_dir_name: str) -> Path:
    """Ray's checkpoint upload for a checkpoint staged in its own run folder: every rank renames its files
    into `run_dir/checkpoint_dir_name` (merged there, as Ray's copy merges them) and returns that folder.

    Renaming, not copying: staging and checkpoints share one filesystem (`staging_dir`), and Ray's default
    copy wrote every checkpoint twice — for the 2B model with EMA, 37 GB per save: twice the disk (a 64 GiB
    GPU machine never finished its first save) and twice the write time.
    """
    # Ray's own upload refuses a storage folder this node cannot see (its marker file is missing); so do we,
    # or the checkpoints of a cluster without shared storage would scatter over the nodes' local disks.
    if not (run_dir / RAY_STORAGE_MARKER).is_file():
        raise RuntimeError(
            f"the stage's run folder {run_dir} is not shared with this node (no {RAY_STORAGE_MARKER}): "
            "on a cluster, --work-dir must be a filesystem every node mounts"
        )
    target = run_dir / checkpoint_dir_name
    for path in sorted(staged.rglob("*")):  # parents before children
        moved = target / path.relative_to(staged)
        if path.is_dir():
            moved.mkdir(parents=True, exist_ok=True)
        else:
            moved.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, moved)
    return target


def clear_staging(root: Path | str, rank: int | None = None) -> None:
    """Remove stale staging (one rank's, or every rank's): nothing in it was ever reported, so it is garbage."""
    target = Path(root) if rank is None else rank_staging_dir(root, rank)
    shutil.rmtree(target, ignore_errors=True)


def save_checkpoint(
    engine: Any,
    state: TrainState,
    rank: int,
    data_position: Mapping[str, Any] | None,
    metrics: Mapping[str, float],
    ema: Any | None = None,
    *,
    staging_root: Path | str,
    before_report: Callable[[], None] | None = None,
) -> None:
    """Every rank: DeepSpeed state + own data position → barrier → `ray.train.report` with the checkpoint.

    Staged in `staging_root` (see `staging_dir`); `before_report` runs once the staged copy is complete
    (reliability drills kill a worker there)."""
    import ray.train
    import torch.distributed as dist

    tmp = rank_staging_dir(staging_root, rank) / ds_tag(state.step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        engine.save_checkpoint(
            str(tmp / DS_DIR), tag=ds_tag(state.step), client_state=_universal_client_state()
        )
        (tmp / DATA_DIR).mkdir()
        (tmp / DATA_DIR / f"rank{rank:05d}.json").write_text(json.dumps(dict(data_position or {})))
        if rank == 0:
            (tmp / STATE_FILE).write_text(json.dumps(state.to_dict(), indent=2))
            if ema is not None:
                ema.save(tmp / EMA_FILE)
        if before_report is not None:
            before_report()
        run_dir, name = Path(staging_root).parent, f"checkpoint_{ds_tag(state.step)}"
        if rank == 0:  # what a save of this step killed while moving left there: never reported, garbage
            shutil.rmtree(run_dir / name, ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()
        ray.train.report(
            dict(metrics),
            checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
            checkpoint_dir_name=name,
            checkpoint_upload_fn=lambda checkpoint, dir_name: ray.train.Checkpoint.from_directory(
                str(move_into_run(Path(checkpoint.path), run_dir, dir_name))
            ),
        )
        # The controller registers a report only when it next polls the workers; a worker dying before that
        # would lose the checkpoint. Wait until it is committed, so a reported checkpoint is a durable one.
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class ResumePoint:
    """Where a restarted stage continues: which DeepSpeed folder/tag to load and the data position."""

    state: TrainState
    ds_dir: Path
    tag: str
    universal: bool
    data_position: dict[str, Any] | None
    ema_file: Path | None


def read_state(checkpoint_dir: Path) -> TrainState:
    return TrainState.from_dict(json.loads((Path(checkpoint_dir) / STATE_FILE).read_text()))


def resume_point(checkpoint_dir: Path, rank: int, world_size: int, zero_stage: int) -> ResumePoint:
    """How to resume from a checkpoint on this world size; a ZeRO layout change needs the universal copy."""
    checkpoint_dir = Path(checkpoint_dir)
    state = read_state(checkpoint_dir)
    ds_dir = checkpoint_dir / DS_DIR
    ema_file = checkpoint_dir / EMA_FILE
    ema = ema_file if ema_file.is_file() else None
    same_layout = state.world_size == world_size and state.zero_stage == zero_stage
    # A data position counts global batches, so rank 0's position also continues the stream on another
    # world size (each rank then takes every world_size-th batch from there).
    position_file = checkpoint_dir / DATA_DIR / f"rank{rank if same_layout else 0:05d}.json"
    position = json.loads(position_file.read_text()) if position_file.is_file() else None
    if same_layout:
        return ResumePoint(state, ds_dir, ds_tag(state.step), False, position or None, ema)
    universal_tag = f"{ds_tag(state.step)}_universal"
    if not (ds_dir / universal_tag / "zero").is_dir():
        raise WorldSizeMismatchError(
            f"checkpoint {checkpoint_dir} was written by {state.world_size} workers with ZeRO-{state.zero_stage}; "
            f"this run has {world_size} workers with ZeRO-{zero_stage} and the checkpoint has no universal copy "
            f"({ds_dir / universal_tag}) — convert it with training.worker.checkpoints.convert_to_universal or resume "
            f"on {state.world_size} workers"
        )
    return ResumePoint(state, ds_dir, universal_tag, True, position or None, ema)


def load_checkpoint(engine: Any, point: ResumePoint) -> None:
    path, _ = engine.load_checkpoint(str(point.ds_dir), tag=point.tag)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint {point.tag} in {point.ds_dir}")


def convert_to_universal(ds_dir: Path, tag: str, output_dir: Path | None = None) -> Path:
    """Convert DeepSpeed checkpoint `ds_dir/tag` to a universal one (`{output_dir or ds_dir}/{tag}_universal`).

    Idempotent; runs in-process with one worker (ds_to_universal's process pools are not needed for the
    model sizes here and would fork a Ray driver).
    """
    from deepspeed.checkpoint import ds_to_universal

    output_dir = Path(output_dir or ds_dir)
    out = output_dir / f"{tag}_universal"
    if (out / "zero").is_dir() and (output_dir / "latest_universal").is_file():
        return out
    args = argparse.Namespace(
        input_folder=str(Path(ds_dir) / tag),
        output_folder=str(out),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # it prints per-parameter progress
        ds_to_universal.main(args)
    (output_dir / "latest_universal").write_text(out.name)
    return out


def universal_weights(universal_dir: Path) -> dict[str, torch.Tensor]:
    """The fp32 module weights of a universal checkpoint (`zero/<name>/fp32.pt`)."""
    zero = Path(universal_dir) / "zero"
    weights = {}
    for param_dir in sorted(p for p in zero.iterdir() if (p / "fp32.pt").is_file()):
        weights[param_dir.name] = torch.load(param_dir / "fp32.pt", map_location="cpu", weights_only=True)[
            "param"
        ]
    if not weights:
        raise FileNotFoundError(f"no fp32 weights under {zero}")
    return weights


def export_stage(checkpoint_dir: Path, export_dir: Path, model_config: Any, extra: Mapping[str, Any]) -> Path:
    """Build the stage export from its final checkpoint (see the module docstring); atomic rename at the end."""
    from model.pretrained import model_from_state_dict, save_pretrained

    checkpoint_dir, export_dir = Path(checkpoint_dir), Path(export_dir)
    state = read_state(checkpoint_dir)
    tmp = export_dir.with_name(export_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    universal = convert_to_universal(checkpoint_dir / DS_DIR, ds_tag(state.step), tmp / UNIVERSAL_DIR)
    model = model_from_state_dict(model_config, universal_weights(universal), str(universal))
    save_pretrained(model, tmp)
    if (checkpoint_dir / EMA_FILE).is_file():
        shutil.copyfile(checkpoint_dir / EMA_FILE, tmp / EMA_FILE)
    info = {"step": state.step, "source_checkpoint": str(checkpoint_dir), **state.to_dict(), **dict(extra)}
    (tmp / EXPORT_STATE_FILE).write_text(json.dumps(info, indent=2, default=str))
    return replace_folder(tmp, export_dir)


def export_complete(export_dir: Path) -> bool:
    export_dir = Path(export_dir)
    return (export_dir / EXPORT_STATE_FILE).is_file() and (export_dir / "model.safetensors").is_file()
