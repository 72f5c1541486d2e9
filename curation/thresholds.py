"""Late filtering: thresholds applied to the scores table, never to video.

`thresholds.yaml`:

    scores:                       # min and/or max per numeric column of clips.parquet
      motion_score: {min: 0.5}
      aesthetic_score: {min: 4.5}
      caption_score: {min: 20}
    caption:
      require_caption: true       # a clip without a caption is dropped ("caption.required")
      max_caption_issues: 0       # more quality issues than this drops the clip ("caption.issues")
      ignore_issues: []           # issue names that do not count, e.g. [too_long]

A clip is dropped by every filter it fails; `filtered_by` lists them (`<column>.min`, `<column>.max`,
`caption.required`, `caption.issues`). A null score (its scorer was skipped, or failed on that clip) never
drops a clip; the report says how many clips each filter could not judge.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.errors import UserError
from core.yaml_files import load_yaml_model
from curation.format import THRESHOLDS_FILE, thresholds_digest

THRESHOLDS_HISTORY_DIR = "thresholds-history"


class ScoreRange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ScoreRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise UserError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class CaptionRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    require_caption: bool = True
    max_caption_issues: int | None = Field(0, ge=0)  # None: issues never drop a clip
    ignore_issues: list[str] = Field(default_factory=list)


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scores: dict[str, ScoreRange] = Field(default_factory=dict)
    caption: CaptionRules = Field(default_factory=CaptionRules)

    def filter_names(self) -> list[str]:
        """Every filter these thresholds define, in the order `filtered_by` lists them."""
        names = []
        for column, rng in self.scores.items():
            names += [f"{column}.{bound}" for bound in ("min", "max") if getattr(rng, bound) is not None]
        if self.caption.require_caption:
            names.append("caption.required")
        if self.caption.max_caption_issues is not None:
            names.append("caption.issues")
        return names


def default_thresholds() -> Thresholds:
    """LAION aesthetic ≥ 4.5 (Open-Sora 1.2's cut on Panda-70M) and clean captions. Motion and caption
    similarity have no universal scale: set them per dataset from the score histograms (scores.png)."""
    return Thresholds(scores={"aesthetic_score": ScoreRange(min=4.5)})


def load_thresholds(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Thresholds:
    return load_yaml_model(path, Thresholds, overrides)


def dump_thresholds(t: Thresholds) -> str:
    return yaml.safe_dump(t.model_dump(mode="json"), sort_keys=False)


def write_thresholds(path: str | Path, t: Thresholds) -> Path:
    from core.atomic import atomic_write_bytes

    return atomic_write_bytes(Path(path), dump_thresholds(t).encode())


def record_thresholds(out_dir: str | Path, t: Thresholds) -> Path:
    """Write `OUT/thresholds.yaml`, keeping every thresholds file ever applied to OUT (the one replaced
    included) as `OUT/thresholds-history/<hash>.yaml`, so that an earlier filter can be looked up and reapplied."""
    out = Path(out_dir)
    current = out / THRESHOLDS_FILE
    if current.is_file():
        with contextlib.suppress(ValueError):  # a hand-edited file that no longer loads: nothing to keep
            _archive(out, load_thresholds(current))
    _archive(out, t)
    return write_thresholds(current, t)


def _archive(out: Path, t: Thresholds) -> None:
    path = out / THRESHOLDS_HISTORY_DIR / f"{thresholds_hash(t)}.yaml"
    if not path.is_file():
        write_thresholds(path, t)


def thresholds_hash(t: Thresholds) -> str:
    """Stable short hash of what the thresholds mean (for MLflow tags and the report)."""
    return thresholds_digest(t.model_dump(mode="json"))


def issue_list(value: object) -> list[str]:
    """A `caption_issues` cell as a list (parquet gives numpy arrays, Ray gives lists, absent is None)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [str(v) for v in value]


def _has_caption(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def check_score_columns(t: Thresholds, columns: Iterable[str], numeric: Iterable[str]) -> None:
    """ValueError naming the first score column of `t` that is not in `columns` (`numeric`: the choices)."""
    present = set(columns)
    for column in t.scores:
        if column not in present:
            raise _missing_score_column(column, numeric)


def _missing_score_column(column: str, numeric: Iterable[str]) -> ValueError:
    return UserError(
        f"thresholds name score column {column!r}, which the clips table lacks "
        f"(numeric columns: {', '.join(sorted(numeric))})"
    )


def score_failures(column: str, values: np.ndarray, rng: ScoreRange) -> dict[str, np.ndarray]:
    """`{"<column>.min": fails, "<column>.max": fails}` for the bounds `rng` sets, over float `values`."""
    failed = {}
    # NaN compares False: a clip without a score is never dropped by that score.
    if rng.min is not None:
        failed[f"{column}.min"] = values < rng.min
    if rng.max is not None:
        failed[f"{column}.max"] = values > rng.max
    return failed


def has_caption(captions: pd.Series) -> np.ndarray:
    return np.array([_has_caption(c) for c in captions], dtype=bool)


def caption_issue_counts(issues: pd.Series | pa.Array | pa.ChunkedArray, ignore: list[str]) -> np.ndarray:
    """Per clip, how many of its caption issues count (those not in `ignore`). Vectorised on arrow lists."""
    if not isinstance(issues, pa.Array | pa.ChunkedArray):
        issues = pa.array([issue_list(v) for v in issues], type=pa.list_(pa.string()))
    if isinstance(issues, pa.ChunkedArray):
        issues = issues.combine_chunks()
    flat = pc.list_flatten(issues)
    parents = pc.list_parent_indices(issues).to_numpy()
    counted = ~pc.is_in(flat, value_set=pa.array(sorted(ignore), pa.string())).to_numpy(zero_copy_only=False)
    return np.bincount(parents[counted], minlength=len(issues)).astype(int)


def caption_failures(
    rules: CaptionRules, captioned: np.ndarray, issue_counts: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The caption filters' verdicts from per-clip facts (`issue_counts` None: the table has no issues)."""
    failed = {}
    if rules.require_caption:
        failed["caption.required"] = ~captioned
    if rules.max_caption_issues is not None:
        if issue_counts is None:
            failed["caption.issues"] = np.zeros(len(captioned), dtype=bool)
        else:
            failed["caption.issues"] = issue_counts > rules.max_caption_issues
    return failed


def score_values(clips: pd.DataFrame, column: str) -> np.ndarray:
    """A score column as float64 (non-numbers NaN); a column the table lacks is a one-line error."""
    if column not in clips.columns:
        raise _missing_score_column(column, clips.select_dtypes("number").columns)
    return pd.to_numeric(clips[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def filter_failures(clips: pd.DataFrame, t: Thresholds) -> dict[str, np.ndarray]:
    """Per filter name, which clips it drops. The one place the filter rule lives (the dashboard uses the
    same functions on cached columns)."""
    failed: dict[str, np.ndarray] = {}
    for column, rng in t.scores.items():
        failed |= score_failures(column, score_values(clips, column), rng)
    captions = clips["caption"] if "caption" in clips.columns else pd.Series([None] * len(clips))
    issues = None
    if t.caption.max_caption_issues is not None and "caption_issues" in clips.columns:
        issues = caption_issue_counts(clips["caption_issues"], t.caption.ignore_issues)
    return failed | caption_failures(t.caption, has_caption(captions), issues)


def apply_thresholds(clips: pd.DataFrame, t: Thresholds) -> pd.DataFrame:
    """A copy of `clips` with `kept` (bool) and `filtered_by` (list of filter names). Pure pandas."""
    out = clips.copy()
    failed = filter_failures(out, t)
    names = t.filter_names()
    out["filtered_by"] = [[n for n in names if failed[n][i]] for i in range(len(out))]
    out["kept"] = np.array([not f for f in out["filtered_by"]], dtype=bool)
    return out
