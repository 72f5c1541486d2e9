"""The training data of one stage: bucketed batches of clips from WebDataset shards, for one rank.

    data = StageData(stage, rank, world_size)
    for batch in data.batches(position):   # infinite; position=None starts the stage
        batch.video     # (B, 3, T, H, W) float32 in [-1, 1]; T = 1 for image stages
        batch.position  # save it with the checkpoint; batches(position) continues with the next batch

Which samples form which batch on which rank comes from the index alone (`training.data.buckets`); the samples are
then read by byte offset from their shards (`training.data.shard_reader`) and decoded, resampled and cropped
(`training.data.video_clips`), in `stage.num_workers` dataloader worker processes. A sample that cannot be used
(undecodable mp4, missing caption, too short, unreadable) is replaced by the next sample of the same bucket and
counted in `stats.skipped` by reason; it never stops training.

Shards are local paths or fsspec URIs (`s3://…`, `gs://…`, with the matching fsspec backend installed).

With precomputed latents (`svp encode`, `training.data.latent_store`; the stage's `latents` option), a batch carries
`batch.encoded` (latents, text embeddings, mask) instead of `batch.video`: the same batches in the same order,
read from the companion shards, and the training worker never builds the VAE or the text encoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from core.errors import UserError
from training.config import BucketConfig, StageConfig
from training.data.buckets import DataPosition, EpochPlan, PlannedBatch, assign_buckets, rank_batches
from training.data.latent_store import DataEntry, open_latents
from training.data.shard_reader import ShardReader, find_shard_folder, join_uri, read_index
from training.data.video_clips import BadClip, clip_from_members, clip_rng

__all__ = ["Batch", "DataPosition", "DataStats", "EncodedBatch", "StageData"]


@dataclass
class EncodedBatch:
    latents: torch.Tensor  # (B, C, F, H', W') float32
    text: torch.Tensor  # (B, L, C_text) float32
    mask: torch.Tensor  # (B, L) long
    empty_text: torch.Tensor  # (L, C_text): the empty caption's embedding (caption dropout)
    empty_mask: torch.Tensor  # (L,)

    def pin_memory(self) -> EncodedBatch:
        return EncodedBatch(*(t.pin_memory() for t in dataclasses.astuple(self)))


@dataclass
class Batch:
    video: torch.Tensor | None  # (B, 3, T, H, W) float32 in [-1, 1]; None when `encoded` is set
    captions: list[str]
    keys: list[str]
    bucket: str  # e.g. "32x32_t9"
    position: DataPosition  # resuming from it yields the batch after this one
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) replaced in this batch
    read_seconds: float = 0.0  # time spent reading and decoding this batch (in its worker)
    encoded: EncodedBatch | None = None  # precomputed latents and text (`svp encode`)

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread (GPU runs), so the copy to the GPU can be asynchronous."""
        if self.encoded is not None:
            return dataclasses.replace(self, encoded=self.encoded.pin_memory())
        return dataclasses.replace(self, video=self.video.pin_memory())


@dataclass
class DataStats:
    samples_read: int = 0
    batches: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason → distinct samples
    wait_seconds: float = 0.0  # time the consumer waited for batches
    read_seconds: float = 0.0  # reading + decoding time summed over workers

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples_read": self.samples_read,
            "batches": self.batches,
            "skipped": dict(self.skipped),
            "skipped_total": sum(self.skipped.values()),
            "wait_seconds": self.wait_seconds,
            "read_seconds": self.read_seconds,
        }


class StageData:
    """The batch stream of one stage for one rank; see the module docstring."""

    def __init__(
        self, stage: StageConfig, rank: int = 0, world_size: int = 1, seed: int | None = None
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.stage, self.rank, self.world_size = stage, rank, world_size
        self.seed = stage.seed if seed is None else seed
        self._load_index()
        self._target_fps = stage.target_fps if stage.kind == "video" else None
        self.bucket_of = assign_buckets(
            self.num_frames, self.fps, self.height, self.width, stage.buckets, self._target_fps
        )
        unfit = int((self.bucket_of < 0).sum())
        if unfit == len(self.keys):
            raise ValueError(
                f"stage {stage.name!r}: none of the {len(self.keys)} samples in {', '.join(stage.data)} fills a "
                f"bucket ({', '.join(b.name for b in stage.buckets)} at {self._target_fps or 'native'} fps)"
            )
        self.stats = DataStats(skipped={"fits_no_bucket": unfit} if unfit else {})
        self._skipped_keys: dict[str, str] = {}
        self._bad: dict[int, str] = {}
        self._plans: dict[int, EpochPlan] = {}
        self._reader = ShardReader()
        self.latents = open_latents(stage, self.entries)
        if self.latents is not None:  # other data (one fixed window per clip): another dataset fingerprint
            joined = f"{self._fingerprint}:{self.latents.eid}".encode()
            self._fingerprint = hashlib.sha256(joined).hexdigest()[:16]

    # ---- public ----------------------------------------------------------------------------------------

    def dataset_fingerprint(self) -> str:
        return self._fingerprint

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Batches each rank takes from a whole epoch."""
        return rank_batches(len(self._plan(epoch)), 0, self.world_size)

    def batches(self, position: DataPosition | None = None) -> Iterator[Batch]:
        """Infinite batch stream of this rank, starting after `position` (from the start when None)."""
        start = self._start(position)
        workers = self.stage.num_workers
        if workers == 0:
            source: Iterator[Batch] = self._stream(start, 0, 1)
        else:
            loader = DataLoader(
                _RankStream(self, start), batch_size=None, num_workers=workers, prefetch_factor=2
            )
            source = iter(loader)
        try:
            while True:
                t0 = time.perf_counter()
                batch = next(source)
                self.stats.wait_seconds += time.perf_counter() - t0
                self._count(batch)
                yield batch
        finally:
            del source  # shuts the worker processes down

    # ---- index ------------------------------------------------------------------------------------------

    def _load_index(self) -> None:
        shard_uris: list[str] = []
        frames, digest = [], hashlib.sha256()
        self.entries: list[DataEntry] = []
        for entry in self.stage.data:
            try:
                folder = find_shard_folder(entry)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"stage {self.stage.name!r}: {err}") from None
            table = read_index(folder)
            table_digest = _table_digest(table)
            digest.update(table_digest)
            self.entries.append(
                DataEntry(folder, table_digest.hex()[:16], table["key"].astype(str).to_numpy())
            )
            names = sorted(table["shard"].unique())
            ids = {name: len(shard_uris) + i for i, name in enumerate(names)}
            shard_uris += [join_uri(folder, name) for name in names]
            frames.append(table.assign(shard_id=table["shard"].map(ids)))
        table = pd.concat(frames, ignore_index=True)
        if table.empty:
            raise UserError(f"stage {self.stage.name!r}: the index of {', '.join(self.stage.data)} is empty")
        self.shard_uris = shard_uris
        self.shard_id = table["shard_id"].to_numpy(np.int64)
        self.keys = table["key"].astype(str).to_numpy(object)
        self.num_frames = table["num_frames"].to_numpy(np.int64)
        self.fps = table["fps"].to_numpy(np.float64)
        self.height = table["height"].to_numpy(np.int64)
        self.width = table["width"].to_numpy(np.int64)
        self.offset = table["offset"].to_numpy(np.int64)  # -1: an older index, the reader scans the shard
        self.length = table["length"].to_numpy(np.int64)
        self._fingerprint = digest.hexdigest()[:16]

    def _plan(self, epoch: int) -> EpochPlan:
        if epoch not in self._plans:
            sizes = [b.batch_size for b in self.stage.buckets]
            self._plans = {epoch: EpochPlan(self.bucket_of, sizes, self.seed, epoch)}
        return self._plans[epoch]

    # ---- the stream -------------------------------------------------------------------------------------

    def _start(self, position: DataPosition | None) -> tuple[int, int, int]:
        if position is None:
            return 0, 0, 0
        if position.seed != self.seed:
            raise UserError(f"data position was saved with seed {position.seed}, this stage uses {self.seed}")
        if position.dataset and position.dataset != self._fingerprint:
            raise UserError(
                f"stage {self.stage.name!r}: the data changed since this position was saved (dataset "
                f"fingerprint {position.dataset}, now {self._fingerprint}); exact resume is impossible"
            )
        if position.consumed >= len(self._plan(position.epoch)):
            return position.epoch + 1, 0, position.step
        return position.epoch, position.consumed, position.step

    def _stream(self, start: tuple[int, int, int], worker: int, workers: int) -> Iterator[Batch]:
        epoch, consumed, step = start
        i = 0  # index in this rank's stream since `start`
        while True:
            plan = self._plan(epoch)
            for j in range(rank_batches(len(plan), consumed, self.world_size)):
                if i % workers == worker:
                    after = consumed + (j + 1) * self.world_size
                    done = after >= len(plan)
                    position = DataPosition(
                        epoch=epoch + 1 if done else epoch,
                        consumed=0 if done else after,
                        step=step + i + 1,
                        world_size=self.world_size,
                        seed=self.seed,
                        dataset=self._fingerprint,
                    )
                    global_index = consumed + j * self.world_size + self.rank
                    yield self._load(plan.batch(global_index), epoch, position)
                i += 1
            epoch, consumed = epoch + 1, 0

    def _load(self, planned: PlannedBatch, epoch: int, position: DataPosition) -> Batch:
        t0 = time.perf_counter()
        bucket = self.stage.buckets[planned.bucket]
        items, captions, keys, skipped = [], [], [], []
        slot, bad_in_a_row = 0, 0
        while len(items) < planned.size:
            index = planned.slot(slot)
            slot += 1
            try:
                item, caption = self._sample(index, epoch, bucket)
            except BadClip as err:
                self._bad[index] = err.reason
                skipped.append((self.keys[index], err.reason))
                bad_in_a_row += 1
                if bad_in_a_row >= len(planned.order):
                    raise RuntimeError(
                        f"stage {self.stage.name!r}: no usable sample in bucket {bucket.name} "
                        f"({len(planned.order)} tried; last: {err})"
                    ) from None
                continue
            bad_in_a_row = 0
            items.append(item)
            captions.append(caption)
            keys.append(self.keys[index])
        encoded = None
        if self.latents is not None:
            stack = [torch.stack([getattr(s, name) for s in items]) for name in ("latents", "text", "mask")]
            encoded = EncodedBatch(*stack, self.latents.empty_text, self.latents.empty_mask)
        return Batch(
            video=None if encoded else torch.stack(items),
            encoded=encoded,
            captions=captions,
            keys=keys,
            bucket=bucket.name,
            position=position,
            skipped=skipped,
            read_seconds=time.perf_counter() - t0,
        )

    def _sample(self, index: int, epoch: int, bucket: BucketConfig) -> tuple[Any, str]:
        """(video, caption), or (EncodedSample, caption) with precomputed latents; BadClip if unusable."""
        if index in self._bad:
            raise BadClip(self._bad[index], "seen before")
        key = self.keys[index]
        if self.latents is not None:
            sample = self.latents.read(self._reader, index, key)
            return sample, sample.caption
        shard = self.shard_uris[self.shard_id[index]]
        try:
            span = (int(self.offset[index]), int(self.length[index])) if self.offset[index] >= 0 else None
            members = self._reader.read_sample(shard, key, span)
        except (OSError, tarfile.TarError) as err:
            raise BadClip("read_error", f"{shard}: {err}") from None
        size = (bucket.height, bucket.width, bucket.num_frames)
        rng = clip_rng(self.seed, epoch, key)
        n, fps = int(self.num_frames[index]), float(self.fps[index])
        return clip_from_members(members, shard, key, n, fps, size, self._target_fps, rng)

    def _count(self, batch: Batch) -> None:
        for key, reason in batch.skipped:
            if key not in self._skipped_keys:
                self._skipped_keys[key] = reason
                self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
        self.stats.samples_read += len(batch.keys)
        self.stats.batches += 1
        self.stats.read_seconds += batch.read_seconds

    def __getstate__(self) -> dict[str, Any]:
        # Dataloader workers started with "spawn" get a fresh reader (open files do not pickle).
        state = dict(self.__dict__)
        state["_reader"] = ShardReader()
        return state


class _RankStream(IterableDataset):
    """One rank's stream, split across dataloader workers: worker k yields every K-th batch, and the
    DataLoader hands them back round-robin, so the order is the same as without workers."""

    def __init__(self, data: StageData, start: tuple[int, int, int]) -> None:
        self.data, self.start = data, start

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        if info is None:
            return self.data._stream(self.start, 0, 1)
        torch.set_num_threads(1)  # the workers are the parallelism
        self.data._reader.for_this_process()
        return self.data._stream(self.start, info.id, info.num_workers)


def _table_digest(table: pd.DataFrame) -> bytes:
    cols = ["shard", "key", "num_frames", "height", "width", "fps"]
    hashed = pd.util.hash_pandas_object(table[cols], index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).digest()
