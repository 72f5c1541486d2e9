"""Re-filtering a built output folder: new thresholds change kept clips and shards, nothing is decoded for
scoring, and going back to the first thresholds gives the first shards byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from curation.format import make_clip_id
from curation.refilter import refilter
from curation.shards import ShardConfig, write_shards
from curation.tables import (
    CLIPS_FILE,
    SOURCES_FILE,
    clips_table,
    read_table,
    sources_table,
    write_table_atomic,
)
from curation.thresholds import ScoreRange, Thresholds, apply_thresholds, load_thresholds, write_thresholds
from model.video_io import write_mp4

CFG = ShardConfig(fps=8, short_side=32, target_shard_mb=0.006, prefix="rf")
LOOSE = Thresholds(scores={"motion_score": ScoreRange(min=0.0)})
TIGHT = Thresholds(scores={"motion_score": ScoreRange(min=2.0), "aesthetic_score": ScoreRange(min=5.0)})


def _build(out: Path, with_uri: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    sources, rows = [], []
    for s, (fps, n) in enumerate([(24.0, 72), (25.0, 50)]):
        sid = f"{s}" * 32
        frames = rng.integers(0, 256, size=(n, 40, 56, 3), dtype=np.uint8)
        uri = str(write_mp4(frames, out / "raw" / f"v{s}.mp4", fps))
        sources.append(
            {
                "source_id": sid,
                "uri": uri,
                "bytes": Path(uri).stat().st_size,
                "status": "ok",
                "reason": "",
                "duration_s": n / fps,
                "fps": fps,
                "width": 56,
                "height": 40,
                "codec": "h264",
                "num_clips": 2,
            }
        )
        for k, (a, b) in enumerate([(0, n // 2), (n // 2, n)]):
            rows.append(
                {
                    "clip_id": make_clip_id(sid, a, b),
                    "source_id": sid,
                    "uri": uri,
                    "start_frame": a,
                    "end_frame": b,
                    "start_s": a / fps,
                    "end_s": b / fps,
                    "fps": fps,
                    "width": 56,
                    "height": 40,
                    "motion_score": [0.5, 3.0, 4.0, 1.0][2 * s + k],
                    "aesthetic_score": [6.0, 5.5, 4.0, np.nan][2 * s + k],
                    "caption": f"random noise clip number {2 * s + k}",
                    "caption_source": "sidecar",
                    "caption_issues": [],
                    "caption_score": np.nan,
                }
            )
    sources.append(
        {
            "source_id": "f" * 32,
            "uri": str(out / "raw" / "x.txt"),
            "bytes": 3,
            "status": "rejected",
            "reason": "not a video",
        }
    )
    write_table_atomic(sources_table(sources), out / SOURCES_FILE)
    clips = apply_thresholds(pd.DataFrame(rows), LOOSE)
    table = clips if with_uri else clips.drop(columns=["uri"])
    write_table_atomic(clips_table(table), out / CLIPS_FILE)
    write_thresholds(out / "thresholds.yaml", LOOSE)
    write_shards(out, clips[clips["kept"]], CFG)
    return clips


def _digests(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").glob("*.tar"))
    }


def _keys(out: Path) -> list[str]:
    urls = [str(p) for p in sorted((out / "shards").glob("*.tar"))]
    return sorted(s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False))


def test_refilter_changes_kept_and_shards_without_decoding(tmp_path, monkeypatch):
    out = tmp_path / "out"
    clips = _build(out)
    first = _digests(out)
    assert _keys(out) == sorted(clips["clip_id"])
    tight_path = tmp_path / "tight.yaml"
    write_thresholds(tight_path, TIGHT)

    import av

    opened = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    # In this process (not Ray tasks), so that every video open is seen.
    report = refilter(out, tight_path, use_ray=False)
    assert opened == []  # a stricter filter needs no video at all: kept clips are already transcoded
    # clip 0: motion 0.5 < 2; clip 2: aesthetic 4.0 < 5; clip 3: motion 1.0 < 2 (aesthetic null: not judged)
    table = read_table(out / CLIPS_FILE)
    assert table["kept"].tolist() == [False, True, False, False]
    assert [list(f) for f in table["filtered_by"]] == [
        ["motion_score.min"],
        [],
        ["aesthetic_score.min"],
        ["motion_score.min"],
    ]
    assert _keys(out) == [clips["clip_id"][1]]
    assert load_thresholds(out / "thresholds.yaml") == TIGHT
    assert report["clips"]["kept"] == 1 and report["filters"]["aesthetic_score.min"]["not_judged"] == 1
    assert json.loads((out / "report.json").read_text())["thresholds_hash"] == report["thresholds_hash"]
    index = pd.read_parquet(out / "shards" / "index.parquet")
    assert index["key"].tolist() == [clips["clip_id"][1]]
    assert index["fps"].tolist() == [CFG.fps]  # the settings of the first run

    loose_path = tmp_path / "loose.yaml"
    write_thresholds(loose_path, LOOSE)
    opened.clear()
    refilter(out, loose_path, use_ray=False)
    # The clips that come back in kept their transcodes when they were dropped: no video is read again.
    reads = sorted(Path(p).name for p in opened if isinstance(p, str))
    assert reads == []
    assert _digests(out) == first
    assert read_table(out / CLIPS_FILE)["kept"].all()


def test_refilter_takes_uris_from_sources_and_reports_bad_input(tmp_path):
    out = tmp_path / "out"
    _build(out, with_uri=False)
    path = tmp_path / "t.yaml"
    write_thresholds(path, TIGHT)
    assert refilter(out, path, use_ray=False)["clips"]["kept"] == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("scores:\n  motion: {min: 1}\n")
    with pytest.raises(ValueError, match="'motion', which the clips table lacks"):
        refilter(out, bad)
    bad.write_text("scores:\n  motion_score: {mn: 1}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: scores.motion_score.mn: unknown key"):
        refilter(out, bad)
    with pytest.raises(FileNotFoundError, match="has no clips.parquet"):
        refilter(tmp_path / "empty", path)
