"""Saving thresholds, and "Apply": `curation.refilter.refilter` in a background thread with progress.

Nothing is overwritten unless the user says so, and the folder's own `thresholds.yaml` is only ever
written by the re-filter itself. Before the re-filter touches anything, the thresholds are checked
against the clips table through the same functions it applies (a missing column fails here, not half
way); the re-filter writes shards first and `clips.parquet`/`thresholds.yaml`/`report.json` last, so a
failure leaves the folder's tables and thresholds as they were.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from curation.format import THRESHOLDS_FILE
from curation.thresholds import Thresholds, load_thresholds, write_thresholds


def save_thresholds(out_dir: Path, target: str, t: Thresholds, overwrite: bool) -> Path:
    """Write `t` as YAML to `target` (relative paths are inside `out_dir`); one-line errors otherwise."""
    if not target.strip():
        raise UserError("give a file name to save the thresholds to")
    path = Path(target).expanduser()
    path = path if path.is_absolute() else Path(out_dir) / path
    if path.suffix not in (".yaml", ".yml"):
        raise UserError(f"{path}: thresholds files end in .yaml")
    if path.resolve() == (Path(out_dir) / THRESHOLDS_FILE).resolve():
        raise UserError(f"{path} is what the folder was filtered with; only Apply rewrites it")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; tick 'overwrite' to replace it")
    write_thresholds(path, t)
    load_thresholds(path)  # what `svp curate filter --thresholds` will read: it must load back
    return path


class _Collect(logging.Handler):
    def __init__(self, job: ApplyJob) -> None:
        super().__init__(logging.INFO)
        self.job = job

    def emit(self, record: logging.LogRecord) -> None:
        self.job.lines.append(record.getMessage())


@dataclass
class ApplyJob:
    """One re-filter running in a thread; the page polls `done`, `lines`, `error` and `report`."""

    out_dir: Path
    thresholds_path: Path
    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)
    report: dict | None = None
    error: str | None = None
    finished: float | None = None
    _thread: threading.Thread | None = None

    @property
    def done(self) -> bool:
        return self.finished is not None

    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def start(self) -> ApplyJob:
        self._thread = threading.Thread(target=self._run, name="svp-apply", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        from curation.refilter import refilter

        handler = _Collect(self)
        logger = logging.getLogger("curation")
        logger.addHandler(handler)
        previous = logger.level
        logger.setLevel(logging.INFO)
        self.lines.append(f"re-filtering {self.out_dir} with {self.thresholds_path}")
        try:
            self.report = refilter(self.out_dir, self.thresholds_path, use_ray=False)
            self.lines.append("done: shards, index, clips.parquet, thresholds.yaml and report.json rewritten")
        except Exception as err:  # shown on the page; the folder's tables were not rewritten
            self.error = f"{type(err).__name__}: {err}"
        finally:
            logger.removeHandler(handler)
            logger.setLevel(previous)
            self.finished = time.monotonic()
