"""`svp encode`: precompute a stage's latents and caption embeddings with Ray Data (layout and identity:
`training.data.latent_store`; one shard's work: `training.encode.encode_shard`).

    shard tasks ─► map_batches(ShardEncoder)   actor pool, GPUs when the cluster has them; one shard per call
    then, per data folder: index.parquet, empty_caption.safetensors, encoding.json (written last: complete)

Which clips go to which bucket comes from the training loader itself (`StageData`, the same index and bucket
rules), so the latents are those the stage would compute. Resumable like curation: a shard whose completion
record matches is skipped, and since a shard always encodes to the same bytes, a run killed at any point and
run again gives byte-identical files. A clip that cannot be encoded is listed with its reason (the `reason`
column of index.parquet and `encoding.json`), and the loader skips it as it skips a bad clip today.

This lives in `training/` rather than `curation/` (where DESIGN.md puts it) because it reuses the loader's
bucketing and decoding, and curation may not import training.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from training.data.latent_store import (
    EMPTY_CAPTION_FILE,
    ENCODING_FILE,
    INDEX_FILE,
    encoding_id,
    encoding_identity,
    latents_folder,
)
from training.data.shard_reader import is_remote, join_uri
from training.encode.encode_shard import ShardEncoder, ShardTask, encode_empty_caption, read_record, task_row

if TYPE_CHECKING:
    from training.config.schema import StageConfig

log = logging.getLogger("svp.training")

LATENT_INDEX_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("key", pa.string()),
        ("bucket", pa.string()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
        ("reason", pa.string()),
    ]
)


@dataclass
class FolderPlan:
    """The encoding of one data folder of one stage."""

    stage: StageConfig
    folder: str  # the shards folder
    out_dir: str  # its latents folder for this encoding
    identity: dict[str, Any]
    source_digest: str
    tasks: list[ShardTask]
    unfit: int  # samples that fill none of the stage's buckets (never trained on, not encoded)
    done_before: int = 0


@dataclass
class EncodeResult:
    stage: str
    out_dir: str
    samples: int
    encoded: int
    shards: int
    shards_done_before: int
    unfit: int
    failures: list[list[str]] = field(default_factory=list)  # [key, reason, detail]

    @property
    def failed(self) -> dict[str, int]:
        return dict(sorted(Counter(f[1] for f in self.failures).items()))


def plan_encode(stage: StageConfig) -> list[FolderPlan]:
    """What encoding `stage` means, one plan per data folder; user errors (missing weights, remote data) are
    ValueError/FileNotFoundError before anything runs."""
    from training.data.stage_data import StageData

    for what, spec in (("autoencoder", stage.autoencoder), ("text_encoder", stage.text_encoder)):
        if spec.path and not Path(spec.path).expanduser().exists():
            raise FileNotFoundError(f"stage {stage.name!r}: {what}.path {spec.path} does not exist")
    data = StageData(stage.replace(latents="off"))
    identity = encoding_identity(stage)
    eid = encoding_id(identity)
    plans, start = [], 0
    for entry in data.entries:
        if is_remote(entry.folder):
            raise ValueError(
                f"svp encode writes next to the shards, and {entry.folder} is not a local folder"
            )
        folder = str(Path(entry.folder.removeprefix("file://")).resolve())  # actors may run elsewhere
        out_dir = latents_folder(folder, eid)
        per_shard: dict[str, list[tuple]] = {}
        unfit = 0
        for i in range(start, start + len(entry.keys)):
            if data.bucket_of[i] < 0:
                unfit += 1
                continue
            uri = data.shard_uris[data.shard_id[i]]
            sample = (str(data.keys[i]), int(data.num_frames[i]), float(data.fps[i]), int(data.bucket_of[i]))
            per_shard.setdefault(uri, []).append((*sample, int(data.offset[i]), int(data.length[i])))
        start += len(entry.keys)
        names = sorted(uri[len(entry.folder) :].lstrip("/") for uri in per_shard)
        tasks = [
            ShardTask(name, join_uri(folder, name), out_dir, per_shard[join_uri(entry.folder, name)])
            for name in names
        ]
        plans.append(FolderPlan(stage, entry.folder, out_dir, identity, entry.digest, tasks, unfit))
    return plans


def run_encode(
    stages: list[StageConfig], *, gpus_per_actor: float | None = None, actors: int = 1, batch_size: int = 4
) -> list[EncodeResult]:
    """Encode the stages' data on the connected Ray; returns one result per (stage, data folder). Stages that
    share an encoding and data encode once. `gpus_per_actor` None: 1 when the cluster has GPUs, else 0."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("svp encode needs a connected Ray (orchestration.ray_connect)")
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    plans = [plan for stage in stages for plan in plan_encode(stage)]
    seen: set[str] = set()
    for plan in plans:
        if plan.out_dir in seen:
            continue
        seen.add(plan.out_dir)
        pending = [task for task in plan.tasks if not task.is_done()]
        plan.done_before = len(plan.tasks) - len(pending)
        log.info(
            "stage %s: %d shards to encode into %s (%d done before)",
            plan.stage.name,
            len(pending),
            plan.out_dir,
            plan.done_before,
        )
        if pending:
            _encode_shards(plan.stage, pending, gpus_per_actor, actors, batch_size)
        _write_empty_caption(plan, gpus_per_actor)
    return [_finish(plan) for plan in plans]


def _encode_shards(
    stage: StageConfig, tasks: list[ShardTask], gpus: float, actors: int, batch_size: int
) -> None:
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars
    ctx.enable_progress_bars = True
    try:
        ds = ray.data.from_items([task_row(t) for t in tasks], override_num_blocks=len(tasks))
        ds = ds.map_batches(
            ShardEncoder,
            fn_constructor_kwargs={
                "stage": stage.resolved(),
                "compute_dtype": "float32",
                "batch_size": batch_size,
            },
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, len(tasks)))),
            num_gpus=gpus,
            max_restarts=2,
            max_task_retries=2,
        )
        # Closed on the way out (Ctrl-C included), so Ray Data's executor stops before Ray does.
        with contextlib.closing(iter(ds.iter_batches(batch_size=None))) as rows:
            for _ in rows:
                pass  # each shard's record is on disk once its row arrives
    finally:
        ctx.enable_progress_bars = saved


def _write_empty_caption(plan: FolderPlan, gpus: float) -> None:
    import ray

    path = Path(plan.out_dir) / EMPTY_CAPTION_FILE
    if path.is_file():
        return
    task = ray.remote(encode_empty_caption).options(num_gpus=gpus)
    atomic_write_bytes(path, ray.get(task.remote(plan.stage.resolved(), "float32")))


def _finish(plan: FolderPlan) -> EncodeResult:
    """index.parquet, then encoding.json (what marks the folder complete for the loader)."""
    rows, failures = [], []
    for task in plan.tasks:
        record = read_record(task)
        for key, bucket, offset, length in record["rows"]:
            rows.append((task.shard, key, bucket, offset, length, ""))
        bucket_of = {s[0]: plan.stage.buckets[s[3]].name for s in task.samples}
        for key, reason, *detail in record["failures"]:
            rows.append((task.shard, key, bucket_of[key], -1, -1, reason))
            failures.append([key, reason, detail[0] if detail else ""])
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in LATENT_INDEX_SCHEMA.names]
    table = pa.Table.from_arrays(
        [pa.array(c, t.type) for c, t in zip(columns, LATENT_INDEX_SCHEMA, strict=True)],
        schema=LATENT_INDEX_SCHEMA,
    )
    out = Path(plan.out_dir)
    atomic_write(out / INDEX_FILE, lambda tmp: pq.write_table(table, tmp))
    result = EncodeResult(
        plan.stage.name,
        plan.out_dir,
        samples=len(rows),
        encoded=len(rows) - len(failures),
        shards=len(plan.tasks),
        shards_done_before=plan.done_before,
        unfit=plan.unfit,
        failures=sorted(failures),
    )
    record = {
        "identity": plan.identity,
        "source_digest": plan.source_digest,
        "samples": result.samples,
        "encoded": result.encoded,
        "fits_no_bucket": plan.unfit,
        "failed": result.failed,
        "failures": result.failures,
    }
    atomic_write_text(out / ENCODING_FILE, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return result
