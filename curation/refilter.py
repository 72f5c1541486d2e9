"""Re-filter a finished curation output with new thresholds (`svp curate filter OUT --thresholds FILE`).

Scores are already in `clips.parquet`, so nothing is decoded for scoring: the thresholds are applied to the
table, and only the shards change (`curation.publish`, the one writer of shards, index, tables and report). Transcoded clips stay in `OUT/shards/.transcoded/` whether the thresholds
keep them or not (see `curation.shards`), so a clip is transcoded once, however often it is dropped and
taken back, and shards whose content did not change are not rewritten. `dry_run` reports what the thresholds
would keep without writing anything; `prune_transcodes` removes the transcodes of clips no shard holds.
Every thresholds file applied is kept in `OUT/thresholds-history/<hash>.yaml`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from core.atomic import atomic_write_bytes
from curation.format import INDEX_FILE, SHARDS_DIR
from curation.publish import filtered, publish
from curation.report import build_report
from curation.shards import MANIFEST_FILE, TRANSCODED_DIR, ShardConfig, read_shard_config
from curation.tables import CLIPS_FILE, SOURCES_FILE, read_table
from curation.thresholds import load_thresholds


def refilter(
    out_dir: str | os.PathLike,
    thresholds_path: str | os.PathLike,
    *,
    shard_config: ShardConfig | None = None,
    use_ray: bool | None = None,
    dry_run: bool = False,
    overrides: dict | None = None,
) -> dict:
    """Re-apply thresholds to `OUT/clips.parquet`; rewrite it, `thresholds.yaml`, the shards, the index and
    the report. Shards are written with `shard_config`, else the settings the last run used. With `dry_run`,
    only return the report these thresholds would give (counts and hours per filter); nothing is written."""
    out = Path(out_dir)
    for name in (CLIPS_FILE, SOURCES_FILE):
        if not (out / name).is_file():
            raise FileNotFoundError(f"{out} has no {name}: run `svp curate` into it first")
    thresholds = load_thresholds(thresholds_path, overrides)  # what is recorded: the file with its --set keys
    sources = read_table(out / SOURCES_FILE)
    clips = read_table(out / CLIPS_FILE)
    if dry_run:
        return build_report(sources, filtered(clips, thresholds), thresholds)
    cfg = shard_config or read_shard_config(out) or ShardConfig()
    return publish(out, sources, clips, thresholds, cfg, use_ray=use_ray)


def prune_transcodes(out_dir: str | os.PathLike) -> tuple[int, int]:
    """Delete the transcoded clips of `OUT` that no shard holds (kept for re-filtering); returns (files,
    bytes) removed. Loosening the thresholds afterwards transcodes the clips it takes back again."""
    shards = Path(out_dir) / SHARDS_DIR
    index, manifest_path = shards / INDEX_FILE, shards / MANIFEST_FILE
    if not index.is_file() or not manifest_path.is_file():
        raise FileNotFoundError(f"{out_dir} has no shards to prune: run `svp curate` into it first")
    in_shards = set(pd.read_parquet(index, columns=["key"])["key"])
    files, size = 0, 0
    for mp4 in sorted((shards / TRANSCODED_DIR).glob("*.mp4")):
        if mp4.stem not in in_shards:
            files, size = files + 1, size + mp4.stat().st_size
            mp4.unlink()
    manifest = json.loads(manifest_path.read_text())
    manifest["clips"] = {k: v for k, v in manifest.get("clips", {}).items() if k in in_shards}
    atomic_write_bytes(manifest_path, json.dumps(manifest, sort_keys=True, indent=1).encode())
    return files, size
