"""Publish a curation folder: the one way thresholds become shards, whoever applies them.

    thresholds ─► shards/*.tar + shards/index.parquet ─► clips.parquet ─► thresholds.yaml ─► report.json

`svp curate` publishes what it just scored, `svp curate filter` (and the dashboard's Apply, and the
pipeline's filter step, through `curation.refilter`) what `clips.parquet` holds. Shards first: if this is
interrupted, `clips.parquet` and `thresholds.yaml` still describe the shards of the last complete publish,
and running the same command again finishes the job. Scores are never recomputed here: a clip is
transcoded once (`OUT/shards/.transcoded/`), however often it is dropped and taken back.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from curation.report import finish_report
from curation.shards import ShardConfig, mark_transcode_failures, transcode_failures, write_shards
from curation.tables import CLIPS_FILE, SOURCES_FILE, clips_table, write_table_atomic
from curation.thresholds import Thresholds, apply_thresholds, record_thresholds


def with_uris(clips: pd.DataFrame, sources: pd.DataFrame) -> pd.DataFrame:
    """Clips tables written without `uri` get it from sources.parquet (one row per source)."""
    if "uri" in clips.columns:
        return clips
    uris = sources.drop_duplicates("source_id").set_index("source_id")["uri"]
    out = clips.copy()
    out["uri"] = out["source_id"].map(uris)
    lost = out.loc[out["uri"].isna(), "source_id"].unique().tolist()
    if lost:
        raise ValueError(f"{CLIPS_FILE}: clips of source {lost[0]} have no uri in {SOURCES_FILE}")
    return out


def filtered(clips: pd.DataFrame, thresholds: Thresholds) -> pd.DataFrame:
    """The clips with `kept`/`filtered_by` of these thresholds (any earlier ones dropped first)."""
    return apply_thresholds(clips.drop(columns=["kept", "filtered_by"], errors="ignore"), thresholds)


def publish(
    out_dir: str | os.PathLike,
    sources: pd.DataFrame,
    clips: pd.DataFrame,
    thresholds: Thresholds,
    shard_config: ShardConfig,
    *,
    use_ray: bool | None = None,
) -> dict:
    """Apply `thresholds` to the scored `clips` of `sources` and write the folder's shards, index, clips
    table, thresholds and report, in that order (see the module docstring); returns the report."""
    out = Path(out_dir)
    clips = filtered(clips, thresholds)
    kept = with_uris(clips[clips["kept"]].reset_index(drop=True), sources)
    write_shards(out, kept, shard_config, use_ray=use_ray)
    clips = mark_transcode_failures(clips, transcode_failures(out))
    write_table_atomic(clips_table(clips), out / CLIPS_FILE)
    record_thresholds(out, thresholds)
    return finish_report(out, sources, clips, thresholds)
