"""The curation job: one Ray Data streaming pipeline from raw videos to scored clips, then late filtering,
shards and the report.

    sources ─► flat_map(process_source)            CPU tasks: fingerprint, probe, decode once, cut, motion
            ─► map_batches(AestheticScorer)        actor pool (GPUs when the cluster has them)
            ─► map_batches(CaptionStage)           actor pool
            ─► drop frames ─► driver               per-source completion → .svp-work (resume)
    then    clips.parquet + thresholds ─► shards/ + index ─► report.json

Source rows come back through a ledger actor (a source may produce no clip at all); the driver declares a
source finished when its row has arrived and all of its clips have been scored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import ray

from core.atomic import atomic_write_text
from core.errors import UserError
from curation import aesthetic, captions
from curation.config import CurationConfig
from curation.publish import filtered
from curation.publish import publish as publish_folder
from curation.report import build_report
from curation.resume import ResumeState
from curation.scorer_resources import scorer_share
from curation.sources import SourceEntry, fingerprint, list_sources, open_source
from curation.stage_guard import GuardedStage, StageHealth, raise_if_broken
from curation.tables import (
    CLIPS_FILE,
    SOURCES_FILE,
    clips_table,
    empty_clips,
    numeric_clip_columns,
    source_row,
    sources_table,
    write_table_atomic,
)
from curation.thresholds import (
    Thresholds,
    check_score_columns,
    default_thresholds,
    load_thresholds,
)
from curation.thumbs import write_thumbs
from curation.worker import SourceLedger, process_source

log = logging.getLogger(__name__)


# A resource only the head node has (what Ray Train pins its state actor with).
HEAD_NODE_RESOURCE = "node:__internal_head__"
# In .svp-work/: the last scoring pass's per-stage work (rows, busy seconds) and wall time.
STAGE_WORK_FILE = "stage_work.json"


def require_ray() -> None:
    """Curation runs on the Ray this process is connected to; which cluster that is, is the caller's
    choice (`orchestration.ray_connect` for the svp commands), never made here."""
    if not ray.is_initialized():
        raise RuntimeError(
            "curation needs a connected Ray: call orchestration.ray_connect.connect() first (svp commands do)"
        )


@dataclass
class _InFlight:
    entry: SourceEntry
    clips: dict[str, dict] = field(default_factory=dict)
    row: dict | None = None


def _scorer_stages(cfg: CurationConfig) -> list[tuple[str, type, object]]:
    """(name, class, config) of the scorer stages that can run; the others say once why they are skipped
    (their score column stays null, and the report lists them)."""
    stages = []
    for name, module, cls, sub in (
        ("aesthetic", aesthetic, aesthetic.AestheticScorer, cfg.aesthetic),
        ("caption", captions, captions.CaptionStage, cfg.caption),
    ):
        reason = module.availability(sub)
        if reason is None:
            stages.append((name, cls, sub))
        else:
            log.warning(reason)
    return stages


def _build_dataset(
    pending: list[SourceEntry],
    cfg: CurationConfig,
    stages: list[tuple[str, type, object]],
    ledger,
    health,
) -> ray.data.Dataset:
    ds = ray.data.from_items([e.to_row() for e in pending], override_num_blocks=len(pending))
    # max_retries bounds the retries of a source whose worker process died (Ray Data's default is forever).
    # Ray 2.60 has no named parameter for it; the ray_remote_args route warns of deprecation but works.
    ds = ds.flat_map(
        process_source,
        fn_kwargs={"config": cfg.model_dump(mode="json"), "ledger": ledger},
        num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=cfg.ray.decode_concurrency),
        max_retries=cfg.ray.max_retries,
        runtime_env=cfg.ray.runtime_env,
    )
    cluster = ray.cluster_resources()
    share = scorer_share(
        sum(cfg.ray.actors_of(name)[0] for name, _, _ in stages),
        cluster.get("CPU", 0.0),
        cluster.get("GPU", 0.0),
        cfg.ray.cpus_per_scorer,
        cfg.ray.gpus_per_scorer,
    )
    if stages:
        log.info("scorer actors: %g CPU and %g GPU each", share.cpus, share.gpus)
    for name, cls, sub in stages:
        least, most = cfg.ray.actors_of(name)
        ds = ds.map_batches(
            GuardedStage,
            fn_constructor_kwargs={"stage_cls": cls, "name": name, "config": sub, "health": health},
            batch_format="numpy",
            batch_size=cfg.ray.scorer_batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=least, max_size=most),
            num_cpus=share.cpus,
            num_gpus=share.gpus,
            max_restarts=cfg.ray.max_retries,
            max_task_retries=cfg.ray.max_retries,
            runtime_env=cfg.ray.runtime_env,
        )
    return ds.drop_columns(["frames"])


class _Driver:
    """Collects scored clips and source rows, and records each source as soon as it is complete."""

    def __init__(
        self, pending: list[SourceEntry], state: ResumeState, ledger, health, max_stage_failures: int
    ):
        self.inflight = {e.uri: _InFlight(e) for e in pending}
        self.state = state
        self.ledger = ledger
        self.health, self.max_stage_failures = health, max_stage_failures
        self.failed: list[dict] = []

    def add_clips(self, batch: pd.DataFrame) -> None:
        for rec in batch.to_dict("records"):
            job = self.inflight.get(rec["uri"])
            if job is not None:  # clip ids are deterministic: a retried task's repeat is the same clip
                job.clips[rec["clip_id"]] = rec

    def settle(self) -> None:
        raise_if_broken(
            self.health, self.max_stage_failures
        )  # before recording anything a broken stage touched
        for row in ray.get(self.ledger.drain.remote()):
            if row["uri"] in self.inflight:
                self.inflight[row["uri"]].row = row
        for uri in [u for u, j in self.inflight.items() if self._complete(j)]:
            self._finish(self.inflight.pop(uri))

    @staticmethod
    def _complete(job: _InFlight) -> bool:
        return job.row is not None and (job.row["status"] != "ok" or len(job.clips) >= job.row["num_clips"])

    def _finish(self, job: _InFlight) -> None:
        row = job.row
        if row["status"] == "failed":
            self.failed.append(row)  # not recorded as done: a rerun tries it again
            return
        clips = None
        if row["status"] == "ok":
            # Thumbnails before the manifest line: a source recorded as finished has all of its thumbnails.
            write_thumbs(self.state.dir.parent, job.clips.values())
            clips = pd.DataFrame(sorted(job.clips.values(), key=lambda r: r["clip_id"]))
        self.state.record(job.entry, row, clips)

    def close(self) -> None:
        """Sources still open when the stream ended: their worker died on every attempt, or a scorer
        stage lost some of their clips."""
        self.settle()
        attempts, source_ids = ray.get(self.ledger.attempts_of.remote())
        for uri, job in sorted(self.inflight.items()):
            if job.row is not None:
                lost = job.row["num_clips"] - len(job.clips)
                reason = (
                    f"{lost} of {job.row['num_clips']} clips were lost in a scorer stage (see the Ray logs)"
                )
                self.failed.append({**job.row, "status": "failed", "reason": reason, "num_clips": 0})
                continue
            n = attempts.get(uri, 0)
            reason = (
                f"worker crashed or was killed on each of {n} attempts"
                if n
                else "never processed: its task failed before starting (see the Ray logs)"
            )
            self.failed.append(
                source_row(
                    uri=uri,
                    bytes=job.entry.bytes,
                    source_id=source_ids.get(uri) or _fingerprint_or_none(uri, job.entry.bytes),
                    status="failed",
                    reason=reason,
                )
            )
        self.inflight.clear()


def _fingerprint_or_none(uri: str, size: int) -> str | None:
    try:
        with open_source(uri) as f:
            return fingerprint(f, size)
    except OSError:
        return None


def _score_sources(
    pending: list[SourceEntry],
    cfg: CurationConfig,
    stages: list[tuple[str, type, object]],
    state: ResumeState,
) -> list[dict]:
    """Run the streaming job over `pending`; returns the rows of sources that failed."""
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.max_errored_blocks
    ctx.enable_progress_bars = True
    # A block holds one source: a block whose task died on every retry is dropped, not fatal; the driver
    # notices that the source never reported and records it as failed. (Restored afterwards: the context
    # is process-wide, and other Ray Data jobs in this process must keep failing loudly.)
    ctx.max_errored_blocks = -1
    # The job's bookkeeping (the ledger, the scorer-health actor) lives on the head node, as Ray Train's own
    # state actor does: a lost worker node must not take it down (its tasks are retried elsewhere; a ledger
    # there would die with it and fail the whole job). Not "the driver's node": a driver joining by the GCS
    # address may attach to any raylet of its host.
    on_head = {"resources": {HEAD_NODE_RESOURCE: 0.001}}
    ledger = SourceLedger.options(**on_head).remote()
    health = StageHealth.options(**on_head).remote()
    started = time.perf_counter()
    try:
        ds = _build_dataset(pending, cfg, stages, ledger, health)
        driver = _Driver(pending, state, ledger, health, cfg.ray.max_consecutive_stage_failures)
        # Closed on the way out, not when the generator is collected: on Ctrl-C, Ray Data's executor thread
        # would otherwise still run when Ray shuts down, and its next call ends the process with exit 1.
        with contextlib.closing(iter(ds.iter_batches(batch_format="pandas", batch_size=None))) as batches:
            for batch in batches:
                driver.add_clips(batch)
                driver.settle()
        driver.close()
        _record_stage_work(state.dir / STAGE_WORK_FILE, time.perf_counter() - started, ledger, health)
        return driver.failed
    finally:
        ray.kill(ledger)
        ray.kill(health)
        ctx.enable_progress_bars, ctx.max_errored_blocks = saved


def _record_stage_work(path: Path, wall_s: float, ledger, health) -> None:
    """What each stage of this scoring pass did and for how long (task/actor seconds summed over workers),
    beside the pass's wall time: a stage whose busy seconds per worker approach the wall set the pace; the
    others waited. Read by benchmarks and `svp curate report`-style summaries; never by the job itself."""
    work = {"wall_s": wall_s, "decode": ray.get(ledger.decode_work.remote())}
    work["scorers"] = ray.get(health.stage_work.remote())
    atomic_write_text(path, json.dumps(work, indent=2, sort_keys=True) + "\n")


def _dedupe(sources: list[dict], clips: dict[str, pd.DataFrame]) -> None:
    """The same content under two uris would give two clips with one id: the first uri keeps its clips,
    the others are rejected as duplicates."""
    owner: dict[str, str] = {}
    for row in sources:
        sid = row.get("source_id")
        if row["status"] != "ok" or not sid:
            continue
        if sid in owner:
            row.update(status="rejected", reason=f"duplicate content of {owner[sid]}", num_clips=0)
            clips.pop(row["uri"], None)
        else:
            owner[sid] = row["uri"]


@dataclass(frozen=True)
class CurationRequest:
    """A checked request: what `run_curation` needs before anything decodes."""

    cfg: CurationConfig
    out: Path
    thresholds: Thresholds
    listing: list[SourceEntry]
    stages: list[tuple[str, type, object]]


def check_curation(
    input: str, output: str | os.PathLike, config: CurationConfig | None = None
) -> CurationRequest:
    """Everything that can be wrong with the request, found before OUT exists, Ray starts or anything
    decodes (the CLI calls this before connecting to Ray)."""
    cfg = config or CurationConfig()
    out = Path(output)
    thresholds = load_thresholds(cfg.thresholds_file) if cfg.thresholds_file else default_thresholds()
    known = numeric_clip_columns(cfg.motion.codec_mvs)
    check_score_columns(thresholds, known, known)
    listing = list_sources(input, cfg.extensions, exclude=str(out))
    if not listing:
        raise UserError(f"no videos found in {input} (extensions: {', '.join(cfg.extensions)})")
    return CurationRequest(cfg, out, thresholds, listing, _scorer_stages(cfg))


def run_curation(
    input: str,
    output: str | os.PathLike,
    config: CurationConfig | None = None,
    *,
    request: CurationRequest | None = None,
    publish: bool = True,
) -> dict:
    """Curate `input` into `output` (see DESIGN.md for the folder layout) on the connected Ray; returns the
    report. `request`: the result of `check_curation` for the same arguments (else it is made here).
    `publish=False` scores only: `sources.parquet` and the scores in `clips.parquet`, no shards (a pipeline's
    filter step publishes them with its own thresholds); the report is returned, not written."""
    req = request or check_curation(input, output, config)
    cfg, out, thresholds, listing, stages = req.cfg, req.out, req.thresholds, req.listing, req.stages
    state = ResumeState(out, cfg.scoring_fingerprint())
    pending = [e for e in listing if not state.is_done(e)]
    log.info(
        "%d sources, %d already finished in an earlier run, %d to process",
        len(listing),
        len(listing) - len(pending),
        len(pending),
    )
    require_ray()
    failed = _score_sources(pending, cfg, stages, state) if pending else []
    rows, table = _assemble(listing, state, failed)
    write_table_atomic(sources_table(rows), out / SOURCES_FILE)
    sources = sources_table(rows).to_pandas()
    if not publish:
        write_table_atomic(clips_table(table), out / CLIPS_FILE)
        return build_report(sources, filtered(table, thresholds), thresholds)
    return publish_folder(out, sources, table, thresholds, cfg.shards)


def _assemble(
    listing: list[SourceEntry], state: ResumeState, failed: list[dict]
) -> tuple[list[dict], pd.DataFrame]:
    """Every listed source's row (this run's failures, else its recorded result) and all clips of ok
    sources, sorted by clip id."""
    failed_by_uri = {r["uri"]: r for r in failed}
    sources, clips = [], {}
    for e in listing:
        row = failed_by_uri.get(e.uri) or state.source_row(e.uri)
        sources.append(row)
        if row["status"] == "ok":
            clips[e.uri] = state.clips(e.uri)
    _dedupe(sources, clips)
    parts = [c for c in clips.values() if len(c)]
    table = pd.concat(parts, ignore_index=True) if parts else empty_clips()
    for column in ("aesthetic_score", "caption_score"):
        if column not in table.columns:
            table[column] = math.nan  # a skipped scorer's column exists and is null
    return sources, table.sort_values("clip_id", kind="stable").reset_index(drop=True)
