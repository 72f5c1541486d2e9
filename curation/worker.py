"""The per-source task of the curation job: fingerprint, probe, decode once, yield clip records.

It runs inside a Ray Data `flat_map` task. Whatever happens to the source, its sources-table row is
reported to the `SourceLedger` actor — clip rows travel through the Ray Data stream to the scorers, source
rows (including those of sources that produced no clip) travel through the ledger. A Python exception is
caught here and reported as `failed` with its one-line reason; a crash of the worker process itself is
retried by Ray a bounded number of times, and the driver records the source as `failed` when no attempt
reported back (the ledger counts attempts).
"""

from __future__ import annotations

import fnmatch
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import cv2
import ray

from curation.config import CurationConfig
from curation.decode import DecodeError, SourceDecoder
from curation.format import make_clip_id
from curation.probe import probe_source
from curation.scenes import ClipPlan
from curation.sources import SourceEntry, fingerprint, open_source, read_sidecar
from curation.tables import source_row
from curation.thumbs import THUMB_COLUMN, thumbnail_jpeg


@ray.remote(num_cpus=0)
class SourceLedger:
    """Collects the sources-table rows that tasks report, and how often each source was attempted."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.attempts: dict[str, int] = {}
        self.source_ids: dict[str, str] = {}
        self._new: list[str] = []
        self.work = {"sources": 0, "video_s": 0.0, "busy_s": 0.0}

    def started(self, uri: str, source_id: str | None) -> None:
        self.attempts[uri] = self.attempts.get(uri, 0) + 1
        if source_id:
            self.source_ids[uri] = source_id

    def report(self, row: dict, seconds: float = 0.0) -> None:
        """A source's row; `seconds`: the task's time on it (probe, decode, cuts, motion, frames)."""
        self.rows[row["uri"]] = row
        self._new.append(row["uri"])
        if seconds:
            self.work["sources"] += 1
            self.work["video_s"] += float(row.get("duration_s") or 0.0)
            self.work["busy_s"] += seconds

    def decode_work(self) -> dict[str, float]:
        """Sources decoded to the end, their hours of video and the task seconds spent on them (all tasks)."""
        return dict(self.work)

    def drain(self) -> list[dict]:
        """Rows reported since the last call."""
        new, self._new = self._new, []
        return [self.rows[u] for u in dict.fromkeys(new)]

    def attempts_of(self) -> tuple[dict[str, int], dict[str, str]]:
        return dict(self.attempts), dict(self.source_ids)


# Chaos hook: a worker whose source uri matches this glob dies on the spot (no Python exception, no
# cleanup), exactly like a decoder segfault. Tests use it to prove that crashes are retried and recorded;
# it is read from the worker's environment (set through `ray.runtime_env`).
CRASH_ENV = "SVP_CURATION_CRASH_ON"


def _maybe_crash(uri: str) -> None:
    pattern = os.environ.get(CRASH_ENV)
    if pattern and fnmatch.fnmatch(uri, pattern):
        os._exit(70)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _caption(entry: SourceEntry) -> tuple[str | None, str]:
    if entry.caption:
        return entry.caption, "manifest"
    if entry.sidecar:
        text = read_sidecar(entry.sidecar)
        if text:
            return text, "sidecar"
    return None, "none"


def _clip_row(
    clip: Any, uri: str, source_id: str, probe: Any, caption: tuple[str | None, str], cfg: CurationConfig
) -> dict:
    """The record of one clip of a source: its span, the source's facts, frames for the scorers, a thumbnail
    (from frames already decoded), the caption and where it came from, and the motion scores."""
    row = {
        "clip_id": make_clip_id(source_id, clip.start_frame, clip.end_frame),
        "source_id": source_id,
        "uri": uri,
        "start_frame": clip.start_frame,
        "end_frame": clip.end_frame,
        "start_s": clip.start_s,
        "end_s": clip.end_s,
        "fps": probe.fps,
        "width": probe.width,
        "height": probe.height,
        "frames": clip.frames,
        THUMB_COLUMN: thumbnail_jpeg(clip.frames),
        "caption": caption[0],
        "caption_source": caption[1],
        "motion_score": _nan(clip.motion_score),
        "motion_peak": _nan(clip.motion_peak),
    }
    if cfg.motion.codec_mvs:
        row["motion_mv_score"] = _nan(clip.motion_mv_score)
    return row


def process_source(row: dict, config: dict, ledger) -> Iterator[dict]:
    """Ray Data flat_map function: one input row (a `SourceEntry`) → its clip records."""
    cv2.setNumThreads(1)  # one task per CPU: OpenCV must not spread over cores Ray gave to others
    started = time.perf_counter()
    cfg = CurationConfig.model_validate(config)
    entry = SourceEntry(**row)
    base = {"uri": entry.uri, "bytes": entry.bytes}
    source_id = None
    try:
        with open_source(entry.uri) as handle:
            source_id = fingerprint(handle, entry.bytes)
            ray.get(ledger.started.remote(entry.uri, source_id))
            _maybe_crash(entry.uri)
            # FFmpeg reads local files itself, faster than through a Python file object.
            media = entry.uri if "://" not in entry.uri else handle
            probe = probe_source(media, entry.bytes, cfg.probe, cfg.min_duration_s)
            known = {
                "source_id": source_id,
                "duration_s": probe.duration_s,
                "fps": probe.fps,
                "width": probe.width,
                "height": probe.height,
                "codec": probe.codec,
            }
            if probe.status != "ok":
                ray.get(
                    ledger.report.remote(source_row(**base, **known, status="rejected", reason=probe.reason))
                )
                return
            caption, caption_source = _caption(entry)
            handle.seek(0)
            decoder = SourceDecoder(media, probe, cfg)
            n = 0
            for clip in decoder.clips():
                n += 1
                yield _clip_row(clip, entry.uri, source_id, probe, (caption, caption_source), cfg)
        trimmed, short = ClipPlan.for_fps(cfg.scenes, decoder.fps).lost_frames(
            decoder.cuts, decoder.frames_decoded
        )
        lost = {"trimmed_s": trimmed / decoder.fps, "short_pieces_s": short / decoder.fps}
        ok = source_row(**base, **known, **lost, status="ok", num_clips=n)
        ray.get(ledger.report.remote(ok, time.perf_counter() - started))
    except DecodeError as err:
        ray.get(ledger.report.remote(source_row(**base, **known, status="rejected", reason=str(err))))
    except FileNotFoundError as err:
        reason = f"file not found: {err.filename or entry.uri}"
        ray.get(
            ledger.report.remote(source_row(**base, source_id=source_id, status="rejected", reason=reason))
        )
    except Exception as err:  # one bad source must not stop the job: record it and move on
        reason = _one_line(err)
        ray.get(ledger.report.remote(source_row(**base, source_id=source_id, status="failed", reason=reason)))
