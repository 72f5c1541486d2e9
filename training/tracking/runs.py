"""MLflow tracking: one experiment per pipeline, a parent run per pipeline run, a child run per stage.

The driver (`training.driver.pipeline` / `training.driver.stage_run`) creates or re-attaches the runs and logs what is known
before training (resolved config, tags); world rank 0 of the Ray Train worker group logs metrics and sample
videos into the child run by its id. Everything goes through `MlflowClient` with explicit run ids, so no
process relies on MLflow's global "active run" and a restarted driver or worker re-attaches to the same
runs instead of creating duplicates.

Embedded default: a sqlite store `work_dir/mlflow.db` and artifacts under `work_dir/mlartifacts`;
`MLFLOW_TRACKING_URI` points at a server instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import yaml
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from core.digest import digest
from curation.format import THRESHOLDS_FILE, thresholds_digest
from training.errors import StageConfigError
from training.tracking.tracking_sender import BufferedSender, SenderLimits

# Tag names, in one place so the tests and the run-comparison tooling agree with the writer.
TAG_PIPELINE = "svp.pipeline"
TAG_PIPELINE_KEY = "svp.pipeline_key"
TAG_STAGE = "svp.stage"
TAG_STAGE_INDEX = "svp.stage_index"
TAG_RAY_NAME = "svp.ray_run_name"
TAG_DATASET = "svp.dataset_fingerprint"
TAG_THRESHOLDS = "svp.thresholds_hash"
TAG_CONFIG = "svp.config_fingerprint"
TAG_GIT = "svp.git_commit"
TAG_INIT_FROM = "svp.init_from"
TAG_EXPORT = "svp.export_uri"
TAG_STAGE_FINGERPRINT = "svp.stage_fingerprint"  # of the stage's inputs (training.driver.fingerprints)
TAG_RUN_KEY = "svp.run_key"  # the Ray run a child run tracks; a retrain gets a new one
PARENT_TAG = "mlflow.parentRunId"
TAG_ERROR = "svp.error"  # why a run ended FAILED or KILLED

# Exports up to this size are copied into the artifact store; bigger ones are logged as a URI only.
EXPORT_ARTIFACT_MAX_BYTES = 256 * 1024 * 1024
_MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


def resolve_tracking_uri(work_dir: Path) -> str:
    """`MLFLOW_TRACKING_URI` when set, else the embedded sqlite store in the work dir (absolute path)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(work_dir).resolve() / 'mlflow.db'}"


def git_commit() -> str:
    """The commit of the svp checkout that runs this, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def thresholds_hash(data_sources: Iterable[str]) -> str:
    """The curation thresholds hash of the data (`curation.format.thresholds_digest` of its
    `thresholds.yaml`, the same value as in the curation report); "none" when no source has one, and a hash
    of the sources' hashes when several do.

    A source may be a curation output folder (thresholds.yaml inside) or its `shards/` folder (thresholds.yaml
    one level up); local paths or fsspec URIs.
    """
    import fsspec

    digests = []
    for source in data_sources:
        base = str(source).rstrip("/")
        for candidate in (f"{base}/{THRESHOLDS_FILE}", f"{base.rsplit('/', 1)[0]}/{THRESHOLDS_FILE}"):
            fs, path = fsspec.core.url_to_fs(candidate)
            if fs.exists(path):
                digests.append(thresholds_digest(yaml.safe_load(fs.cat_file(path)) or {}))
                break
    if not digests:
        return "none"
    return digests[0] if len(digests) == 1 else digest(digests)


def _truncate(value: str) -> str:
    return value if len(value) <= _MAX_PARAM_CHARS else value[: _MAX_PARAM_CHARS - 1] + "…"


def end_status(error: BaseException) -> str:
    """KILLED for an interrupted driver (Ctrl-C, SIGTERM, Ray Train's sys.exit on SIGINT), else FAILED."""
    return "KILLED" if isinstance(error, KeyboardInterrupt | SystemExit) else "FAILED"


def error_text(error: BaseException) -> str:
    """The `svp.error` tag of a run that ended with `error`. Ray re-raises the interrupt of a signal that lands
    in `ray.get` as a bare KeyboardInterrupt, so an empty one says what it stands for."""
    message = str(error) or (
        "interrupted (Ctrl-C or SIGTERM)" if isinstance(error, KeyboardInterrupt) else ""
    )
    return f"{type(error).__name__}: {message}"


class Tracker:
    """Driver-side handle on the MLflow store of one pipeline."""

    def __init__(self, tracking_uri: str, pipeline: str, work_dir: Path) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.pipeline = pipeline
        self.work_dir = Path(work_dir).resolve()
        self.experiment_id = self._experiment()

    def _experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.pipeline)
        if found is not None:
            return found.experiment_id
        artifact_location = None
        if self.tracking_uri.startswith("sqlite:"):
            artifact_location = (self.work_dir / "mlartifacts").as_uri()
        return self.client.create_experiment(self.pipeline, artifact_location=artifact_location)

    def _find_run(self, filters: Mapping[str, str]) -> str | None:
        clause = " and ".join(f"tags.`{key}` = '{value}'" for key, value in filters.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=clause, max_results=1)
        return runs[0].info.run_id if runs else None

    def parent_run(self) -> str:
        """The pipeline run for this work dir: re-attached when it exists, else created."""
        key = hashlib.sha256(f"{self.pipeline}\0{self.work_dir}".encode()).hexdigest()[:16]
        run_id = self._find_run({TAG_PIPELINE_KEY: key, TAG_STAGE: "-"})
        if run_id is None:
            tags = {TAG_PIPELINE: self.pipeline, TAG_PIPELINE_KEY: key, TAG_STAGE: "-", TAG_GIT: git_commit()}
            run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=self.pipeline).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    def stage_run(
        self,
        parent_run_id: str,
        stage: str,
        stage_index: int,
        *,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        config: Mapping[str, object],
        run_key: str | None = None,
        fresh: bool = False,
    ) -> str:
        """The child run of one stage, re-attached on restart. Params that changed since it started are an error.

        With `run_key` (the stage's Ray run name, which holds its fingerprint) only a run of that key is
        re-attached, so a retrain on other inputs is a new child run and never appends to the old one's
        metrics; `fresh` (a forced retrain) retires the run of that key first (its key gets `.superseded`).
        """
        lookup = {PARENT_TAG: parent_run_id, TAG_STAGE: stage}
        if run_key is not None:
            lookup[TAG_RUN_KEY] = run_key
        run_id = self._find_run(lookup)
        if run_id is not None and fresh:
            self.client.set_tag(run_id, TAG_RUN_KEY, f"{run_key}.superseded")
            run_id = None
        if run_id is None:
            base = {PARENT_TAG: parent_run_id, TAG_PIPELINE: self.pipeline, TAG_STAGE: stage}
            if run_key is not None:
                base[TAG_RUN_KEY] = run_key
            run_id = self.client.create_run(self.experiment_id, tags=base, run_name=stage).info.run_id
            logged: dict[str, str] = {}
        else:
            self.client.update_run(run_id, status="RUNNING")
            logged = self.client.get_run(run_id).data.params
        new_params = []
        for key, value in sorted(params.items()):
            value = _truncate(str(value))
            if key not in logged:
                new_params.append(Param(key, value))
            elif logged[key] != value:
                raise StageConfigError(
                    f"stage {stage}: {key} was {logged[key]!r} when this run started and is now {value!r}; "
                    f"use another --work-dir to start a fresh run"
                )
        all_tags = {TAG_STAGE_INDEX: str(stage_index), TAG_GIT: git_commit(), **tags}
        self.client.log_batch(
            run_id, params=new_params, tags=[RunTag(k, str(v)) for k, v in all_tags.items()]
        )
        self.client.log_dict(run_id, dict(config), "config/stage.json")
        return run_id

    def record_step(self, parent_run_id: str, step: str, status: str, fingerprint: str | None) -> None:
        """On the parent run: how this pipeline run treated a step (`run`, `rerun`, `skipped`) and under
        which fingerprint (tags `svp.step.<step>.status` / `.fingerprint`, the latest pipeline run's)."""
        tags = [
            RunTag(f"svp.step.{step}.status", status),
            RunTag(f"svp.step.{step}.fingerprint", fingerprint or ""),
        ]
        self.client.log_batch(parent_run_id, tags=tags)

    def finish(self, run_id: str, ok: bool = True, error: BaseException | None = None) -> None:
        """End a run: FINISHED, or (with `error`) FAILED — KILLED when the driver was interrupted — with
        the error as the `svp.error` tag, so no run is left RUNNING whatever stopped it."""
        if error is None:
            self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")
            return
        self.client.set_tag(run_id, TAG_ERROR, _truncate(error_text(error)))
        self.client.set_terminated(run_id, status=end_status(error))

    def log_export(self, run_id: str, export_dir: Path) -> None:
        """Record the stage's exported checkpoint: copied as an artifact when small, else by URI."""
        export_dir = Path(export_dir).resolve()
        files = [p for p in export_dir.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        pointer = {
            "uri": export_dir.as_uri(),
            "bytes": size,
            "files": sorted(str(p.relative_to(export_dir)) for p in files),
        }
        self.client.log_dict(run_id, pointer, "export/pointer.json")
        self.client.set_tag(run_id, TAG_EXPORT, export_dir.as_uri())
        if size <= EXPORT_ARTIFACT_MAX_BYTES:
            for name in ("config.json", "model.safetensors", "ema.safetensors"):
                if (export_dir / name).is_file():
                    self.client.log_artifact(run_id, str(export_dir / name), "export")


def end_runs_after(tracker: Tracker, error: BaseException, *run_ids: str | None) -> None:
    """End the runs FAILED or KILLED after `error`, without letting a tracking failure (the server away, a
    deleted run) replace the error that stopped the stage: that one is only warned about."""
    for run_id in run_ids:
        if run_id is None:
            continue
        try:
            tracker.finish(run_id, error=error)
        except Exception as tracking_error:
            logging.getLogger("svp.training").warning(
                f"MLflow: could not end run {run_id} as {end_status(error)} at {tracker.tracking_uri} "
                f"({type(tracking_error).__name__}: {str(tracking_error)[:300]})"
            )


@contextlib.contextmanager
def ending_run(tracker: Tracker | None, run_id: str | None) -> Iterator[None]:
    """The one place that decides how a run ends: FINISHED when the block completes, FAILED or KILLED
    (`end_status`) when it raises — a failed stage, a Ray error, Ctrl-C, SIGTERM — so no run is left RUNNING.
    Nothing to end without a tracker or a run (a caller that does not own the run passes None)."""
    if tracker is None or run_id is None:
        yield
        return
    try:
        yield
    except BaseException as err:
        end_runs_after(tracker, err, run_id)
        raise
    tracker.finish(run_id)


class RunLogger:
    """Rank-0 writer of one stage run's metrics and artifacts (used inside the Ray Train worker).

    Metrics are buffered and sent in batches by a background thread (`training.tracking.tracking_sender`), so a step
    costs no round trip to the server and a server that goes away mid-stage never stops training: the buffer
    waits (bounded, oldest dropped with a warning) and sending is retried with backoff. `flush()` sends now
    (before each checkpoint), `close()` sends what is left at the end, waiting up to `close_timeout_s`; when
    the trainer drops the logger without closing it, it is closed then (or at interpreter exit).
    """

    def __init__(self, tracking_uri: str, run_id: str, limits: SenderLimits | None = None) -> None:
        if tracking_uri.startswith(("http:", "https:")):
            _leave_retries_to_the_sender()
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self._sender = BufferedSender(self.client, run_id, limits or SenderLimits())
        self._local_dir: Path | None = None  # where log_json writes its files before they are uploaded
        self._finalizer = weakref.finalize(self, self._sender.close)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._sender.add_metrics(metrics, step)

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        """Uploaded in the background from `path`, which must stay (it does: samples are kept locally)."""
        self._sender.add_artifact(Path(path), artifact_path)

    def log_json(self, payload: Mapping[str, object], artifact_file: str) -> None:
        """Written to a local temp file first (kept, and named in the warning, if it cannot be uploaded)."""
        try:
            if self._local_dir is None:
                self._local_dir = Path(tempfile.mkdtemp(prefix=f"svp-mlflow-{self.run_id[:8]}-"))
            local = self._local_dir / artifact_file
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
        except OSError as err:  # a full or read-only temp dir must not stop training
            logging.getLogger("svp.training").warning(f"MLflow: {artifact_file} not logged: {err}")
            return
        folder = str(Path(artifact_file).parent)
        self._sender.add_artifact(local, None if folder == "." else folder)

    def flush(self) -> None:
        """Send what is buffered now; waits (up to `flush_wait_s`) only while the server answers."""
        self._sender.flush()

    def close(self) -> bool:
        """Send what is left, waiting up to `close_timeout_s`; False (after a warning) when some could not be."""
        self._finalizer.detach()
        return self._sender.close()


def _leave_retries_to_the_sender() -> None:
    """MLflow's HTTP client retries a failed call for ~4 minutes by default; the sender retries on its own
    with backoff and must notice an outage quickly, so this process (the rank-0 worker, where only the
    RunLogger talks to MLflow) uses short HTTP retries unless the user set them."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
