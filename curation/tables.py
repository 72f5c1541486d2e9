"""The sources and clips tables: their columns and types, and atomic parquet writes.

Types are fixed here so that a column that happens to be all-null in one run (a skipped scorer) still has
its real type, and per-source partial results concatenate into one consistent table.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_write

SOURCES_FILE = "sources.parquet"
CLIPS_FILE = "clips.parquet"
SOURCE_STATUSES = ("ok", "rejected", "failed")

SOURCE_SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("uri", pa.string()),
        ("bytes", pa.int64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("codec", pa.string()),
        ("num_clips", pa.int64()),
        # Scene time no clip covers: cut away by scenes.trim_s, or in pieces shorter than scenes.min_clip_s
        # (null in folders curated before these were recorded).
        ("trimmed_s", pa.float64()),
        ("short_pieces_s", pa.float64()),
    ]
)

# Columns of every clip row. Scorer stages may add more; those keep the type pyarrow infers.
CLIP_TYPES: dict[str, pa.DataType] = {
    "clip_id": pa.string(),
    "source_id": pa.string(),
    "uri": pa.string(),
    "start_frame": pa.int64(),
    "end_frame": pa.int64(),
    "start_s": pa.float64(),
    "end_s": pa.float64(),
    "fps": pa.float64(),
    "width": pa.int64(),
    "height": pa.int64(),
    "motion_score": pa.float64(),
    "motion_peak": pa.float64(),
    "motion_mv_score": pa.float64(),
    "aesthetic_score": pa.float64(),
    "caption_score": pa.float64(),
    "caption": pa.string(),
    "caption_source": pa.string(),
    "caption_issues": pa.list_(pa.string()),
    "kept": pa.bool_(),
    "filtered_by": pa.list_(pa.string()),
}


def numeric_clip_columns(codec_mvs: bool) -> list[str]:
    """The numeric columns every clips table of a run has (what thresholds can name before it ran)."""
    numeric = [c for c, t in CLIP_TYPES.items() if pa.types.is_integer(t) or pa.types.is_floating(t)]
    return [c for c in numeric if codec_mvs or c != "motion_mv_score"]


def source_row(**values: object) -> dict:
    """A sources-table row with every column present (missing ones null)."""
    unknown = set(values) - set(SOURCE_SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown sources columns: {sorted(unknown)}")
    row = {name: values.get(name) for name in SOURCE_SCHEMA.names}
    if row["status"] not in SOURCE_STATUSES:
        raise ValueError(f"bad source status {row['status']!r}")
    row["reason"] = row["reason"] or ""
    return row


def sources_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([source_row(**r) for r in rows], schema=SOURCE_SCHEMA)


def clips_table(clips: pd.DataFrame) -> pa.Table:
    """Clips as an arrow table: known columns cast to their types, in a stable order (known first)."""
    clips = clips.reset_index(drop=True)
    known = [c for c in CLIP_TYPES if c in clips.columns]
    extra = sorted(c for c in clips.columns if c not in CLIP_TYPES)
    arrays, fields = [], []
    for name in known + extra:
        values = [_plain(v) for v in clips[name].tolist()]
        typ = CLIP_TYPES.get(name)
        arrays.append(pa.array(values, type=typ, from_pandas=True))
        fields.append(pa.field(name, arrays[-1].type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def empty_clips() -> pd.DataFrame:
    """A clips table with no rows but every column of a scored clip (filters add `kept`/`filtered_by`)."""
    schema = pa.schema([(n, t) for n, t in CLIP_TYPES.items() if n not in ("kept", "filtered_by")])
    return schema.empty_table().to_pandas()


def _plain(value: object) -> object:
    """numpy scalars/arrays (as Ray Data hands them back) to plain Python values."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        return value.tolist()
    return value


def write_table_atomic(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write parquet atomically (`core.atomic`): readers and resumed runs never see half a file."""
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()
