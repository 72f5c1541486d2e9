"""A calm console for `svp`: INFO headings on stderr, Ray workers' and DeepSpeed's chatter in log files.

`setup_logging(verbose)` is what every command calls first: besides the log levels it sets RAY_LOG_TO_DRIVER=0
(before Ray is imported), so a `ray.init` that does not pass `log_to_driver` keeps the workers' output in the Ray
session's log files, and, in a process that is svp's own (`claim_console`, the `svp` program rather than a
call of `main([...])` inside another one), keeps Ray's C++ log lines off the console (`native_stderr`).
`ray_init_options(verbose)` are the same as `ray.init` options, for the one place that starts or joins Ray;
`ray_log_dir()` is where the command tells the user to look. Everything is shown with `--verbose`.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.driver.stage_run import StageResult

# For `ray.init(**ray_init_options(verbose))` wherever svp starts or joins Ray.
RAY_QUIET_INIT = {"log_to_driver": False}
# Libraries whose INFO/WARNING lines are noise for a user of svp (their full logs stay in the log files).
NOISY_LOGGERS = (
    "DeepSpeed",
    "deepspeed",
    "ray",
    "ray.data",
    "ray.train",
    "mlflow",
    "alembic",
    "urllib3",
    "fsspec",
    "matplotlib",  # "generated new fontManager" when its font cache is (re)built
)
# Ray's job client modules set their own loggers to INFO when imported ("Uploading package", "Pushing file
# package", "WebSocket closed"), so a level set before that would not hold: a filter on the logger does.
SELF_LEVELLED_LOGGERS = (
    "ray.dashboard.modules.dashboard_sdk",
    "ray.dashboard.modules.job.sdk",
    "ray._private.runtime_env.packaging",
)
_console = {"own": False}


def ray_init_options(verbose: bool) -> dict[str, object]:
    """Options for `ray.init`: workers' output streamed to the terminal only with `--verbose`."""
    return {} if verbose else dict(RAY_QUIET_INIT)


def claim_console() -> None:
    """This process is the `svp` program: its stderr descriptor is svp's to filter (see `setup_logging`)."""
    _console["own"] = True


def _warnings_and_above(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def quiet_job_client() -> None:
    """Only warnings and errors from Ray's job client (`svp pipeline submit`, `svp jobs`)."""
    for name in SELF_LEVELLED_LOGGERS:
        logger = logging.getLogger(name)
        if _warnings_and_above not in logger.filters:
            logger.addFilter(_warnings_and_above)


def setup_logging(verbose: bool = False) -> None:
    """svp's own INFO lines, plainly; libraries' only from WARNING (or everything with `verbose`)."""
    logging.basicConfig(
        level=logging.INFO, format="%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"
    )
    if verbose:
        return
    # Environment first: each is read when its library is imported (here or in the processes Ray starts).
    # RAY_LOG_TO_DRIVER: for every ray.init that does not pass log_to_driver itself, the workers' stdout/stderr
    # (DeepSpeed, Ray Train reports, tqdm) stay in the Ray session's log files. RAY_DATA_LOG_LEVEL: the level
    # Ray Data's console logger takes when a dataset runs (its full log still goes to ray-data.log).
    # TQDM_DISABLE: tqdm bakes it into its defaults on import; no nested bars from libraries.
    # MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR: no download/upload bars of MLflow's artifacts.
    quiet = {"RAY_LOG_TO_DRIVER": "0", "RAY_DATA_LOG_LEVEL": "WARNING", "TQDM_DISABLE": "1"}
    for name, value in {**quiet, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
        os.environ.setdefault(name, value)
    if _console["own"]:
        from orchestration.native_stderr import filter_native_stderr

        filter_native_stderr()  # before Ray is imported: its exit handlers run while the filter still does
    # Ray and MLflow configure their loggers when first imported: set the levels after that.
    import mlflow  # noqa: F401
    import ray  # noqa: F401

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet_job_client()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def ray_log_dir() -> Path | None:
    """The current Ray session's log folder (workers' stdout/stderr), when Ray is up here."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        session = ray._private.worker.global_worker.node.get_session_dir_path()  # noqa: SLF001
    except AttributeError:
        return None
    return Path(session) / "logs"


def stage_summary(result: StageResult) -> str:
    """What became of a training stage, as `svp train` and `svp pipeline run` both print it: skipped or
    trained, why, and where its export is."""
    if result.restored_from:
        return f"{result.stage}: restored ({result.reason}) into {result.export_dir}"
    if result.skipped:
        return f"{result.stage}: skipped, already exported to {result.export_dir} ({result.reason})"
    return f"{result.stage}: trained ({result.reason}) and exported to {result.export_dir}"
