"""Which samples form which batch, on which rank, in which order — decided from the index alone.

Per epoch (seeded by seed and epoch, independent of the world size):
1. every sample has a fixed bucket (`assign_buckets`): among the stage's buckets that its duration can fill,
   one that needs no upscaling, then the closest aspect ratio, then the most frames, then the largest area;
2. each bucket's samples are shuffled and cut into batches of that bucket's batch size (the last batch wraps
   around to the bucket's start, so no sample is dropped and every batch is full);
3. all batches are shuffled into one global order of G batches.

Rank r of w takes global batches c + r, c + r + w, c + r + 2w, … where c is where this run started in the
epoch; the last round wraps around to the epoch's start so every rank gets the same number of batches (no rank
runs dry, whatever the number of shards or samples). Dataloader worker k of K takes every K-th batch of its
rank. A `DataPosition` is (epoch, global batches consumed in it): the same on every rank after the same step,
so rank 0 can save it for all. Resuming on the same world size continues the exact stream; on another world
size the new ranks start at the same global batch and split the rest of the epoch among themselves (each
global batch is still seen once per epoch, up to the wrap-around at the epoch's end).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from training.config import BucketConfig
from training.data.video_clips import fits


@dataclass(frozen=True)
class DataPosition:
    """Where a stage's data stream stands after a step (JSON-safe through `to_dict`/`from_dict`)."""

    epoch: int = 0
    consumed: int = 0  # global batches of `epoch` consumed by all ranks together
    step: int = 0  # batches each rank has consumed since the stage began
    world_size: int = 1
    seed: int = 0
    dataset: str = ""  # the dataset fingerprint this position is about

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataPosition:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"data position: unknown keys {', '.join(unknown)}")
        values = {}
        for name, value in data.items():
            want = str if name == "dataset" else int
            if not isinstance(value, want) or isinstance(value, bool):
                raise ValueError(f"data position: {name} must be {want.__name__}, got {value!r}")
            values[name] = value
        position = cls(**values)
        if min(position.epoch, position.consumed, position.step) < 0 or position.world_size < 1:
            raise ValueError(f"data position out of range: {position}")
        return position


def assign_buckets(
    num_frames: np.ndarray,
    fps: np.ndarray,
    height: np.ndarray,
    width: np.ndarray,
    buckets: list[BucketConfig],
    target_fps: float | None,
) -> np.ndarray:
    """Bucket index per sample, -1 where the sample fills no bucket."""
    n = len(num_frames)
    best = np.full(n, -1, dtype=np.int64)
    best_key = np.full((n, 4), np.inf)
    aspect = np.log(width / np.maximum(height, 1))
    for b, bucket in enumerate(buckets):
        ok = fits(num_frames, fps, bucket.num_frames, target_fps)
        upscale = np.maximum(bucket.height / height, bucket.width / width) > 1.0
        key = np.stack(
            [
                upscale.astype(float),
                np.round(np.abs(aspect - np.log(bucket.width / bucket.height)), 6),
                np.full(n, -bucket.num_frames, dtype=float),
                np.full(n, -bucket.height * bucket.width, dtype=float),
            ],
            axis=1,
        )
        better = ok & _lexi_less(key, best_key)
        best[better] = b
        best_key[better] = key[better]
    return best


def _lexi_less(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise lexicographic a < b."""
    out = np.zeros(len(a), dtype=bool)
    decided = np.zeros(len(a), dtype=bool)
    for col in range(a.shape[1]):
        less, more = a[:, col] < b[:, col], a[:, col] > b[:, col]
        out |= ~decided & less
        decided |= less | more
    return out


@dataclass(frozen=True)
class PlannedBatch:
    bucket: int  # index into the stage's buckets
    start: int  # first slot in the bucket's epoch order
    size: int  # batch size of the bucket
    order: np.ndarray  # the bucket's samples in this epoch's order

    def slot(self, k: int) -> int:
        """Sample index of slot k: 0..size-1 are the batch, later slots stand in for bad samples."""
        return int(self.order[(self.start + k) % len(self.order)])


class EpochPlan:
    """The global batch order of one epoch."""

    def __init__(self, bucket_of: np.ndarray, batch_sizes: list[int], seed: int, epoch: int) -> None:
        self.batch_sizes = batch_sizes
        self.orders: list[np.ndarray] = []
        batch_bucket, batch_start = [], []
        for b, size in enumerate(batch_sizes):
            members = np.flatnonzero(bucket_of == b)
            order = np.random.default_rng([seed, epoch, b]).permutation(members)
            self.orders.append(order)
            count = -(-len(order) // size)
            batch_bucket += [b] * count
            batch_start += [i * size for i in range(count)]
        shuffle = np.random.default_rng([seed, epoch, len(batch_sizes), 1]).permutation(len(batch_bucket))
        self.batch_bucket = np.asarray(batch_bucket, dtype=np.int64)[shuffle]
        self.batch_start = np.asarray(batch_start, dtype=np.int64)[shuffle]

    def __len__(self) -> int:
        return len(self.batch_bucket)

    def batch(self, index: int) -> PlannedBatch:
        """Global batch `index`; indices past the end wrap around to the epoch's start."""
        i = index % len(self)
        b = int(self.batch_bucket[i])
        return PlannedBatch(b, int(self.batch_start[i]), self.batch_sizes[b], self.orders[b])


def rank_batches(plan_length: int, consumed: int, world_size: int) -> int:
    """How many batches each rank takes from an epoch of `plan_length` global batches when the run starts
    at global batch `consumed` of it."""
    if consumed >= plan_length:
        return 0
    return -(-(plan_length - consumed) // world_size)
