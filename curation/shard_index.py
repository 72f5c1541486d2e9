"""`shards/index.parquet`: where each sample of the shards is and what it holds (see `curation.format`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import pyarrow as pa

from curation.format import INDEX_COLUMNS, bucket_for
from curation.shard_tar import tar_layout

INDEX_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("key", pa.string()),
        ("num_frames", pa.int64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("fps", pa.float64()),
        ("duration_s", pa.float64()),
        ("bucket", pa.string()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
    ]
)
assert tuple(INDEX_SCHEMA.names) == INDEX_COLUMNS


class IndexedSample(Protocol):
    clip_id: str
    entry: dict  # num_frames, height, width of its transcoded video

    def lengths(self) -> list[tuple[str, int]]: ...


def index_table(
    names: list[str], shards: list[list[int]], samples: Sequence[IndexedSample], fps: float
) -> pa.Table:
    """The index: one row per sample (shards[n] holds indices into `samples`) with its video's size and
    bucket and its byte span in its tar (`tar_layout`, from the headers: it holds for shards not rewritten)."""
    rows = []
    for name, indices in zip(names, shards, strict=True):
        in_shard = [samples[i] for i in indices]
        spans = tar_layout([(s.clip_id, s.lengths()) for s in in_shard])
        for s, (offset, length) in zip(in_shard, spans, strict=True):
            n, h, w = s.entry["num_frames"], s.entry["height"], s.entry["width"]
            rows.append(
                {
                    "shard": name,
                    "key": s.clip_id,
                    "num_frames": n,
                    "height": h,
                    "width": w,
                    "fps": fps,
                    "duration_s": n / fps,
                    "bucket": bucket_for(h, w, n).name,
                    "offset": offset,
                    "length": length,
                }
            )
    return pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
