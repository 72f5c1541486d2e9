"""How fast the dashboard answers a threshold slider on a folder of 1,000,000 clips.

Writes a synthetic curation folder (clips.parquet + sources.parquet, realistic score spreads and captions),
loads it the way the dashboard does (only the columns it needs), then times what one slider change costs:
`keep_math.summarize` (kept overall, per filter, per source, per bucket) plus the diff against the
folder's thresholds and the moved score's keep-rate curve.

    python -m benchmarks.dashboard_thresholds [--clips 1000000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from curation.tables import CLIPS_FILE, SOURCES_FILE, sources_table, write_table_atomic
from curation.thresholds import ScoreRange, Thresholds, write_thresholds
from orchestration.dashboard.keep_math import diff, keep_curve, load_clip_facts, summarize


def synthetic_folder(out: Path, n: int, sources: int = 5000, seed: int = 0) -> Thresholds:
    rng = np.random.default_rng(seed)
    sid = np.array([f"{i:032x}" for i in range(sources)])
    src = rng.integers(0, sources, n)
    start = rng.uniform(0, 600, n).round(3)
    length = rng.uniform(1.0, 12.0, n).round(3)
    issues = np.array([[], [], [], ["too_short"], ["repetitive"]], dtype=object)
    clips = pd.DataFrame(
        {
            "clip_id": [f"{sid[s][:16]}_{i:07d}_{i + 1:07d}" for i, s in enumerate(src)],
            "source_id": sid[src],
            "start_frame": np.arange(n),
            "end_frame": np.arange(n) + 1,
            "start_s": start,
            "end_s": start + length,
            "fps": 24.0,
            "width": rng.choice([640, 1280, 1920], n),
            "height": rng.choice([360, 720, 1080], n),
            "motion_score": rng.lognormal(0.0, 1.2, n),
            "motion_peak": rng.lognormal(0.8, 1.0, n),
            "aesthetic_score": rng.normal(5.0, 0.8, n),
            "caption_score": rng.normal(25.0, 4.0, n),
            "caption": np.where(rng.random(n) < 0.97, "a person walks a dog along the beach", None),
            "caption_issues": list(issues[rng.integers(0, len(issues), n)]),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    # Straight from pandas: clips_table's per-value conversion is made for robustness, not a million rows.
    write_table_atomic(pa.Table.from_pandas(clips, preserve_index=False), out / CLIPS_FILE)
    rows = [{"source_id": s, "uri": f"/videos/{s}.mp4", "bytes": 1, "status": "ok"} for s in sid]
    write_table_atomic(sources_table(rows), out / SOURCES_FILE)
    t = Thresholds(scores={"motion_score": ScoreRange(min=0.5), "aesthetic_score": ScoreRange(min=4.5)})
    write_thresholds(out / "thresholds.yaml", t)
    return t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        current = synthetic_folder(out, args.clips)
        t1 = time.perf_counter()
        facts = load_clip_facts(out)
        baseline = summarize(facts, current)
        t2 = time.perf_counter()
        grid = np.linspace(0.0, 10.0, 200)
        times = []
        for i in range(args.repeats):
            moved = current.model_copy(deep=True)
            moved.scores["motion_score"] = ScoreRange(min=0.3 + 0.05 * i)
            start = time.perf_counter()
            summary = summarize(facts, moved)
            diff(summary, baseline)
            keep_curve(facts, moved, "motion_score", grid)
            times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(
        f"clips: {args.clips:,}; write folder {t1 - t0:.1f} s; load columns + first summary {t2 - t1:.2f} s"
    )
    print(
        f"slider change (summary + diff + keep curve): median {np.median(ms):.0f} ms, max {ms.max():.0f} ms"
    )


if __name__ == "__main__":
    main()
