"""The curation report: what came in, what went out, and why — as JSON, a table and score histograms.

`report.json` counts sources and hours in, rejections per reason, clips and hours kept and dropped, each
filter's drops (also how many clips it dropped alone, and how many it could not judge because the score
is null), and per score column its spread or that its scorer was skipped. `scores.png` shows every score's
histogram with the threshold lines, which is what thresholds are tuned from.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from core.atomic import atomic_write_bytes
from curation.durations import hms
from curation.shards import TRANSCODE_ERROR, TRANSCODE_FILTER
from curation.thresholds import Thresholds, apply_thresholds, issue_list, thresholds_hash

REPORT_FILE = "report.json"
SCORES_PLOT_FILE = "scores.png"
_HOUR = 3600.0


def _hours(seconds: pd.Series | np.ndarray) -> float:
    return round(float(np.nansum(np.asarray(seconds, dtype=np.float64))) / _HOUR, 6)


def _clip_seconds(clips: pd.DataFrame) -> np.ndarray:
    if len(clips) == 0:
        return np.zeros(0)
    return (pd.to_numeric(clips["end_s"]) - pd.to_numeric(clips["start_s"])).to_numpy(dtype=np.float64)


def score_columns(clips: pd.DataFrame, thresholds: Thresholds) -> list[str]:
    """Score columns to report: every `*_score` column, then any other column the thresholds use."""
    cols = [c for c in clips.columns if c.endswith("_score")]
    return cols + [c for c in thresholds.scores if c not in cols and c in clips.columns]


def _score_summary(values: pd.Series) -> dict:
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    present = v[~np.isnan(v)]
    summary: dict = {"scored": int(present.size), "null": int(v.size - present.size)}
    if present.size == 0:
        return summary | {"status": "skipped"}
    q = np.percentile(present, [0, 5, 50, 95, 100])
    stats = dict(zip(("min", "p05", "p50", "p95", "max"), q.tolist(), strict=True))
    return summary | {"status": "ok", "mean": float(present.mean())} | {k: float(x) for k, x in stats.items()}


def _not_judged(clips: pd.DataFrame, name: str) -> int:
    """Clips a filter could not judge (null score; missing caption-issue column)."""
    column, _, _ = name.rpartition(".")
    if column == "caption":
        if name == "caption.issues" and "caption_issues" not in clips.columns:
            return len(clips)
        return 0
    return int(pd.to_numeric(clips[column], errors="coerce").isna().sum())


def _lost_hours(sources: pd.DataFrame, status: pd.Series, column: str) -> float | None:
    """Scene time of ok sources that no clip covers, for one cause; None when a source did not record it
    (curated before it was recorded)."""
    values = pd.to_numeric(sources.get(column, pd.Series(np.nan, index=sources.index)), errors="coerce")
    values = values[status == "ok"]
    return None if values.isna().any() else _hours(values)


def _transcode_failures(clips: pd.DataFrame, seconds: np.ndarray, filtered_by: list[list[str]]) -> dict:
    """Clips that passed every filter but could not be transcoded into the shards (a few, with why)."""
    hit = np.array([TRANSCODE_FILTER in f for f in filtered_by], dtype=bool)
    reasons = (
        clips[TRANSCODE_ERROR].to_numpy()[hit] if TRANSCODE_ERROR in clips.columns else [""] * int(hit.sum())
    )
    examples = [
        {"clip_id": str(c), "reason": str(r)}
        for c, r in zip(clips["clip_id"].to_numpy()[hit], reasons, strict=True)
    ]
    return {
        "transcode_failed": int(hit.sum()),
        "hours_transcode_failed": _hours(seconds[hit]),
        "transcode_failures": examples[:20],
    }


def build_report(sources: pd.DataFrame, clips: pd.DataFrame, thresholds: Thresholds) -> dict:
    """Counts and hours in and out, per filter, per rejection reason and per skipped scorer."""
    if "kept" not in clips.columns or "filtered_by" not in clips.columns:
        clips = apply_thresholds(clips, thresholds)
    status = sources["status"].astype(str) if len(sources) else pd.Series([], dtype=str)
    durations = pd.to_numeric(sources.get("duration_s", pd.Series([], dtype=float)), errors="coerce")
    rejections = []
    bad = sources[status != "ok"]
    for (st, reason), group in bad.groupby([bad["status"].astype(str), bad["reason"].fillna("")], sort=True):
        rejections.append(
            {"status": st, "reason": reason, "sources": len(group), "hours": _hours(durations[group.index])}
        )
    rejections.sort(key=lambda r: (-r["sources"], r["status"], r["reason"]))

    seconds = _clip_seconds(clips)
    kept = clips["kept"].to_numpy(dtype=bool) if len(clips) else np.zeros(0, dtype=bool)
    filtered_by = [list(f) for f in clips["filtered_by"]] if len(clips) else []
    filters = {}
    for name in thresholds.filter_names():
        hit = np.array([name in f for f in filtered_by], dtype=bool)
        alone = np.array([f == [name] for f in filtered_by], dtype=bool)
        filters[name] = {
            "dropped": int(hit.sum()),
            "hours": _hours(seconds[hit]),
            "dropped_alone": int(alone.sum()),
            "not_judged": _not_judged(clips, name) if len(clips) else 0,
        }
    scores = {c: _score_summary(clips[c]) for c in score_columns(clips, thresholds)}
    issues: dict[str, int] = {}
    if "caption_issues" in clips.columns:
        for value in clips["caption_issues"]:
            for issue in issue_list(value):
                issues[issue] = issues.get(issue, 0) + 1
    return {
        "thresholds_hash": thresholds_hash(thresholds),
        "thresholds": thresholds.model_dump(mode="json"),
        "sources": {
            "total": len(sources),
            **{s: int((status == s).sum()) for s in ("ok", "rejected", "failed")},
            "hours_in": _hours(durations),
            "hours_ok": _hours(durations[status == "ok"]),
            "hours_trimmed": _lost_hours(sources, status, "trimmed_s"),
            "hours_short_pieces": _lost_hours(sources, status, "short_pieces_s"),
        },
        "rejections": rejections,
        "clips": {
            "total": len(clips),
            "kept": int(kept.sum()),
            "filtered": int((~kept).sum()),
            "hours_total": _hours(seconds),
            "hours_kept": _hours(seconds[kept]),
            "hours_filtered": _hours(seconds[~kept]),
            **_transcode_failures(clips, seconds, filtered_by),
        },
        "filters": filters,
        "skipped_scorers": sorted(c for c, s in scores.items() if s["status"] == "skipped"),
        "scores": scores,
        "caption_issues": dict(sorted(issues.items())),
    }


def write_report(out_dir: str | os.PathLike, report: dict) -> Path:
    data = json.dumps(report, indent=2, sort_keys=False, allow_nan=False).encode()
    return atomic_write_bytes(Path(out_dir) / REPORT_FILE, data)


def read_report(out_dir: str | os.PathLike) -> dict:
    path = Path(out_dir) / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no curation report in {out_dir} (expected {path})")
    return json.loads(path.read_text())


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.3f}" if math.isfinite(x) else "-"
    return str(x)


def format_report(report: dict) -> str:
    """The report as rich tables, rendered to plain text (for `svp curate report OUT`)."""
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=110, color_system=None, force_terminal=False)
    s, c = report["sources"], report["clips"]
    overview = Table(title="Curation: in and out", show_lines=False)
    for col in ("", "count", "time"):
        overview.add_column(col, justify="right" if col else "left")
    overview.add_row("sources in", str(s["total"]), hms(s["hours_in"]))
    overview.add_row("sources ok", str(s["ok"]), hms(s["hours_ok"]))
    overview.add_row("sources rejected", str(s["rejected"]), "")
    overview.add_row("sources failed", str(s["failed"]), "")
    for key, label in (("hours_trimmed", "trimmed at cuts"), ("hours_short_pieces", "pieces < min_clip_s")):
        if key in s:  # reports written before these were recorded lack them
            overview.add_row(
                f"scene time lost: {label}", "", hms(s[key]) if s[key] is not None else "not recorded"
            )
    overview.add_row("clips", str(c["total"]), hms(c["hours_total"]))
    overview.add_row("clips kept", str(c["kept"]), hms(c["hours_kept"]))
    overview.add_row("clips filtered", str(c["filtered"]), hms(c["hours_filtered"]))
    if c.get("transcode_failed"):  # kept by the filters, but its transcode failed: not in the shards
        overview.add_row(
            "clips failed to transcode", str(c["transcode_failed"]), hms(c["hours_transcode_failed"])
        )
    console.print(overview)

    if report["rejections"]:
        rej = Table(title="Rejected and failed sources")
        for col in ("status", "reason", "sources", "time"):
            rej.add_column(col, justify="right" if col in ("sources", "time") else "left")
        for r in report["rejections"]:
            rej.add_row(r["status"], r["reason"], str(r["sources"]), hms(r["hours"]))
        console.print(rej)

    flt = Table(title=f"Filters (thresholds {report['thresholds_hash']})")
    for col in ("filter", "dropped", "time", "dropped alone", "not judged"):
        flt.add_column(col, justify="left" if col == "filter" else "right")
    for name, f in report["filters"].items():
        flt.add_row(name, str(f["dropped"]), hms(f["hours"]), str(f["dropped_alone"]), str(f["not_judged"]))
    console.print(flt)

    sc = Table(title="Scores")
    for col in ("score", "status", "scored", "null", "min", "p05", "p50", "p95", "max"):
        sc.add_column(col, justify="left" if col in ("score", "status") else "right")
    for name, v in report["scores"].items():
        stats = [_fmt(v.get(k, float("nan"))) for k in ("min", "p05", "p50", "p95", "max")]
        sc.add_row(name, v["status"], str(v["scored"]), str(v["null"]), *stats)
    console.print(sc)
    if report["skipped_scorers"]:
        console.print(
            f"skipped scorers (no scores, their filters judged nothing): {', '.join(report['skipped_scorers'])}"
        )
    for failure in c.get("transcode_failures", []):
        console.print(f"not in the shards: {failure['clip_id']}: {failure['reason']}")
    if report.get("caption_issues"):
        console.print("caption issues: " + ", ".join(f"{k} {v}" for k, v in report["caption_issues"].items()))
    return buf.getvalue()


def format_rejected_files(sources: pd.DataFrame, limit: int) -> str:
    """The first `limit` rejected or failed sources by name, with their reason (for `svp curate report`)."""
    from rich.console import Console
    from rich.table import Table

    bad = sources[sources["status"].astype(str) != "ok"].sort_values(["status", "uri"], kind="stable")
    if bad.empty:
        return ""
    buf = io.StringIO()
    console = Console(file=buf, width=110, color_system=None, force_terminal=False)
    table = Table(title=f"Rejected and failed files ({len(bad)})")
    for col in ("file", "status", "reason"):
        table.add_column(col, overflow="fold")
    for row in bad.head(max(limit, 0)).itertuples(index=False):
        table.add_row(str(row.uri), str(row.status), str(row.reason or ""))
    console.print(table)
    if len(bad) > limit:
        console.print(f"… and {len(bad) - max(limit, 0)} more (--limit N shows more)")
    return buf.getvalue()


def plot_scores(out_dir: str | os.PathLike, clips: pd.DataFrame, thresholds: Thresholds) -> Path:
    """`OUT/scores.png`: a histogram per score column with its min (green) and max (red) thresholds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = score_columns(clips, thresholds) or ["(no scores)"]
    fig = Figure(figsize=(4.5 * len(cols), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(cols), squeeze=False)[0]
    for ax, col in zip(axes, cols, strict=True):
        ax.set_title(col)
        values = (
            pd.to_numeric(clips[col], errors="coerce").dropna().to_numpy()
            if col in clips.columns
            else np.zeros(0)
        )
        if values.size == 0:
            ax.text(0.5, 0.5, "skipped: no scores", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.hist(values, bins=min(50, max(5, values.size // 4)), color="#4c72b0")
        rng = thresholds.scores.get(col)
        if rng is not None:
            for bound, colour in ((rng.min, "#2ca02c"), (rng.max, "#d62728")):
                if bound is not None:
                    ax.axvline(bound, color=colour, linestyle="--", linewidth=1.5)
        ax.set_xlabel(f"{values.size} clips")
    path = Path(out_dir) / SCORES_PLOT_FILE
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    return atomic_write_bytes(path, buf.getvalue())


def finish_report(
    out_dir: str | os.PathLike, sources: pd.DataFrame, clips: pd.DataFrame, thresholds: Thresholds
) -> dict:
    """Build the report, write `report.json` and `scores.png`; returns the report."""
    report = build_report(sources, clips, thresholds)
    write_report(out_dir, report)
    plot_scores(out_dir, clips, thresholds)
    return report
