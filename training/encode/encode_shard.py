"""One unit of `svp encode`: a curation shard → its companion shard of latents (`training.data.latent_store`).

A Ray Data actor (`ShardEncoder`) holds the stage's autoencoder and text encoder (on its GPU when it has one)
and encodes whole shards, one per call: samples are grouped by bucket (sorted by bucket, then key), decoded
with the training loader's own code (`video_clips.clip_from_members`, fixed window) on a few threads,
encoded `batch_size` at a time, and streamed into the companion tar; then a completion record is written
next to it. The same shard always gives the same bytes (posterior mode, fixed dtype, fixed batches), which
is what lets a rerun after a kill skip finished shards and redo the rest.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic import atomic_write_text
from curation.shard_tar import write_tar_streaming
from training.data.latent_store import (
    COMPUTE_DTYPES,
    ENCODE_WINDOW_SEED,
    LATENT_MEMBER,
    WORK_DIR,
    pack_sample,
)
from training.data.shard_reader import ShardReader
from training.data.video_clips import BadClip, clip_from_members, clip_rng


@dataclass(frozen=True)
class ShardTask:
    """A curation shard to encode: where it is, where its companion goes, and its samples
    (key, num_frames, fps, bucket index, offset, length) in the order they are encoded."""

    shard: str  # tar name
    source_uri: str
    out_dir: str  # the latents folder of the encoding
    samples: list[tuple[str, int, float, int, int, int]]

    @property
    def digest(self) -> str:
        from core.digest import digest

        return digest([self.shard, self.samples])

    def record_path(self) -> Path:
        return Path(self.out_dir) / WORK_DIR / f"{self.shard}.json"

    def is_done(self) -> bool:
        """Finished by an earlier run: its record names these samples and its tar has the recorded size."""
        try:
            record = json.loads(self.record_path().read_text())
        except (OSError, ValueError):
            return False
        tar = Path(self.out_dir) / self.shard
        return record.get("digest") == self.digest and tar.is_file() and tar.stat().st_size == record["bytes"]


def read_record(task: ShardTask) -> dict[str, Any]:
    return json.loads(task.record_path().read_text())


class ShardEncoder:
    """Ray Data actor: `__call__` encodes the shards of a batch of tasks (JSON in column `task`)."""

    def __init__(self, stage: dict[str, Any], compute_dtype: str, batch_size: int, decode_threads: int = 4):
        from pydantic import TypeAdapter

        from training.config import StageConfig
        from training.worker.step import build_stage_autoencoder, build_stage_text_encoder

        self.stage = TypeAdapter(StageConfig).validate_python(stage)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = COMPUTE_DTYPES[compute_dtype]
        self.autoencoder = build_stage_autoencoder(self.stage, device, dtype)
        self.text_encoder = build_stage_text_encoder(self.stage, device, dtype)
        self.batch_size = batch_size
        self.target_fps = self.stage.target_fps if self.stage.kind == "video" else None
        self.reader = ShardReader()
        self.pool = ThreadPoolExecutor(decode_threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [self.encode_shard(ShardTask(**json.loads(t))) for t in batch["task"]]
        return {"record": np.array([json.dumps(r) for r in records], dtype=object)}

    def encode_shard(self, task: ShardTask) -> dict[str, Any]:
        failures: list[tuple[str, str, str]] = []
        buckets: dict[str, str] = {}
        out = Path(task.out_dir)
        spans = write_tar_streaming(out / task.shard, self._encoded(task, failures, buckets))
        record = {
            "digest": task.digest,
            "shard": task.shard,
            "bytes": (out / task.shard).stat().st_size,
            "rows": [[key, buckets[key], offset, length] for key, offset, length in spans],
            "failures": [list(f) for f in failures],
        }
        atomic_write_text(task.record_path(), json.dumps(record, sort_keys=True))
        return record

    def _encoded(self, task: ShardTask, failures: list, buckets: dict) -> Iterator[tuple[str, list]]:
        """(key, [(member, bytes)]) of each encodable sample of the shard, `batch_size` samples encoded at a
        time; unusable samples go to `failures` as (key, reason, detail)."""
        by_bucket: dict[int, list[tuple]] = {}
        for sample in task.samples:
            by_bucket.setdefault(sample[3], []).append(sample)
        for b in sorted(by_bucket):
            bucket = self.stage.buckets[b]
            samples = sorted(by_bucket[b])
            for start in range(0, len(samples), self.batch_size):
                chunk = samples[start : start + self.batch_size]
                decoded = list(self.pool.map(partial(self._decode, task, bucket=bucket), chunk))
                good = []
                for sample, clip in zip(chunk, decoded, strict=True):
                    if isinstance(clip, str):  # "reason: detail"
                        failures.append((sample[0], *clip.split(": ", 1)))
                    else:
                        good.append((sample[0], clip))
                if not good:
                    continue
                for key, data in self._encode([k for k, _ in good], [c for _, c in good]):
                    buckets[key] = bucket.name
                    yield key, [(LATENT_MEMBER, data)]

    def _decode(self, task: ShardTask, sample: tuple, *, bucket: Any) -> tuple[torch.Tensor, str] | str:
        key, num_frames, fps, _, offset, length = sample
        try:
            members = self.reader.read_sample(task.source_uri, key, (offset, length) if offset >= 0 else None)
            size = (bucket.height, bucket.width, bucket.num_frames)
            rng = clip_rng(ENCODE_WINDOW_SEED, 0, key)
            # Messages name the shard, not its path: records stay the same wherever the data lies.
            return clip_from_members(members, task.shard, key, num_frames, fps, size, self.target_fps, rng)
        except BadClip as err:
            return str(err)
        except (OSError, tarfile.TarError) as err:
            return f"read_error: {task.shard}: {err}"

    @torch.no_grad()
    def _encode(self, keys: list[str], clips: list[tuple[torch.Tensor, str]]) -> Iterator[tuple[str, bytes]]:
        video = torch.stack([video for video, _ in clips])
        captions = [caption for _, caption in clips]
        latents = self.autoencoder.encode(video.float()).float().cpu()
        text, mask = self.text_encoder.encode(captions)
        for i, key in enumerate(keys):
            yield key, pack_sample(latents[i], text[i].float(), mask[i], captions[i])


def encode_empty_caption(stage: dict[str, Any], compute_dtype: str) -> bytes:
    """The empty caption's (text, mask) as safetensors bytes: what caption dropout feeds the model."""
    from pydantic import TypeAdapter
    from safetensors.torch import save

    from training.config import StageConfig
    from training.data.latent_store import STORED_DTYPE
    from training.worker.step import build_stage_text_encoder

    config = TypeAdapter(StageConfig).validate_python(stage)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = build_stage_text_encoder(config, device, COMPUTE_DTYPES[compute_dtype])
    text, mask = encoder.encode([""])
    return save(
        {"text": text[0].to(STORED_DTYPE).cpu().contiguous(), "mask": mask[0].long().cpu().contiguous()}
    )


def task_row(task: ShardTask) -> dict[str, str]:
    return {"task": json.dumps(asdict(task))}
