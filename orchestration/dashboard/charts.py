"""Matplotlib figures of the curation page: a score's histogram with its kept part and threshold lines, and
its keep-rate curve. Figures render to PNG on the server, so the page needs nothing from the network."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from curation.thresholds import ScoreRange
from orchestration.dashboard.keep_math import wants_log_axis

_BINS = 60


def score_grid(values: np.ndarray, points: int = 120) -> np.ndarray:
    """Threshold values to draw the keep-rate curve at (log-spaced for a log-axis score)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return np.zeros(1)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.array([lo])
    if wants_log_axis(v):
        return np.geomspace(lo, hi, points)
    return np.linspace(lo, hi, points)


def _bins(values: np.ndarray, log: bool) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.array([lo - 0.5, hi + 0.5])
    return np.geomspace(lo, hi, _BINS + 1) if log else np.linspace(lo, hi, _BINS + 1)


def _threshold_lines(ax, rng: ScoreRange | None) -> None:
    if rng is None:
        return
    for bound, style in (("min", "--"), ("max", ":")):
        value = getattr(rng, bound)
        if value is not None:
            ax.axvline(value, color="#d62728", linestyle=style, linewidth=1.5, label=f"{bound} {value:g}")


def histogram_figure(column: str, values: np.ndarray, kept: np.ndarray, rng: ScoreRange | None) -> Figure:
    """All clips' scores, the kept ones on top, and the current min/max as vertical lines."""
    fig = Figure(figsize=(4.2, 2.6), dpi=90)
    ax = fig.subplots()
    finite = np.isfinite(values)
    if not finite.any():
        ax.text(0.5, 0.5, "no clip has this score\n(its scorer was skipped)", ha="center", va="center")
        ax.set_axis_off()
        return fig
    log = wants_log_axis(values)
    bins = _bins(values[finite], log)
    ax.hist(values[finite], bins=bins, color="#c7c7c7", label="all clips")
    ax.hist(values[finite & kept], bins=bins, color="#1f77b4", label="kept")
    _threshold_lines(ax, rng)
    if log:
        ax.set_xscale("log")
    ax.set_title(column, fontsize=10)
    ax.set_ylabel("clips")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def keep_curve_figure(column: str, curve: pd.DataFrame, values: np.ndarray, rng: ScoreRange | None) -> Figure:
    """Share of clips and of hours kept as `column`'s min moves (every other filter as set)."""
    fig = Figure(figsize=(4.2, 2.6), dpi=90)
    ax = fig.subplots()
    ax.plot(curve["threshold"], curve["clips"], label="clips kept")
    ax.plot(curve["threshold"], curve["hours"], label="hours kept")
    _threshold_lines(ax, rng)
    if wants_log_axis(values):
        ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"{column} min")
    ax.set_ylabel("share kept")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
