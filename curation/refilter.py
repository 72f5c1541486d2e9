"""Re-filter a finished curation output with new thresholds (`svp curate filter OUT --thresholds FILE`).

Scores are already in `clips.parquet`, so nothing is decoded for scoring: the thresholds are applied to the
table, and only the shards change. Clips kept before keep their transcoded mp4 (see `curation.shards`),
so only newly kept clips are transcoded, and shards whose content did not change are not rewritten.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from curation.format import THRESHOLDS_FILE
from curation.report import finish_report
from curation.shards import ShardConfig, read_shard_config, write_shards
from curation.tables import CLIPS_FILE, SOURCES_FILE, clips_table, read_table, write_table_atomic
from curation.thresholds import apply_thresholds, load_thresholds, write_thresholds


def _with_uris(clips: pd.DataFrame, sources: pd.DataFrame) -> pd.DataFrame:
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


def refilter(
    out_dir: str | os.PathLike,
    thresholds_path: str | os.PathLike,
    *,
    shard_config: ShardConfig | None = None,
    use_ray: bool | None = None,
) -> dict:
    """Re-apply thresholds to `OUT/clips.parquet`; rewrite it, `thresholds.yaml`, the shards, the index and
    the report. Shards are written with `shard_config`, else the settings the last run used."""
    out = Path(out_dir)
    for name in (CLIPS_FILE, SOURCES_FILE):
        if not (out / name).is_file():
            raise FileNotFoundError(f"{out} has no {name}: run `svp curate` into it first")
    thresholds = load_thresholds(thresholds_path)
    sources = read_table(out / SOURCES_FILE)
    clips = read_table(out / CLIPS_FILE).drop(columns=["kept", "filtered_by"], errors="ignore")
    clips = apply_thresholds(clips, thresholds)
    cfg = shard_config or read_shard_config(out) or ShardConfig()
    kept = _with_uris(clips[clips["kept"]].reset_index(drop=True), sources)
    # Shards first: if this is interrupted, clips.parquet still describes the shards of the last
    # complete filter, and running the same command again finishes the job.
    write_shards(out, kept, cfg, use_ray=use_ray)
    write_table_atomic(clips_table(clips), out / CLIPS_FILE)
    write_thresholds(out / THRESHOLDS_FILE, thresholds)
    return finish_report(out, sources, clips, thresholds)
