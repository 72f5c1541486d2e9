"""The Ray Train entry point of a stage: one call of `train_loop_per_worker` per worker process.

It sends this rank's log lines to its own file (`<work_dir>/logs/<pipeline>/<stage>/rank<N>.log`, see
`training.driver.stage_run`) and runs the stage's `training.worker.trainer.Trainer`, where the loop and its steps live.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training.driver.job import StageJob

# Loggers that do not pass their records up to the root logger (DeepSpeed has its own handler).
_OWN_HANDLER_LOGGERS = ("DeepSpeed",)
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def train_loop_per_worker(config: dict[str, StageJob]) -> None:
    """Ray Train entry point (see the module docstring): `config["job"]` is the stage's `StageJob`."""
    import ray.train

    from training.worker.trainer import Trainer

    job = config["job"]
    rank = ray.train.get_context().get_world_rank()
    handler = attach_rank_log(Path(job.logs_dir), rank) if job.logs_dir else None
    try:
        Trainer.from_ray(job).run()
    except BaseException:
        logging.getLogger("svp.training").exception(f"rank {rank} failed")
        raise
    finally:
        if handler is not None:
            detach_rank_log(handler)


def attach_rank_log(folder: Path, rank: int) -> logging.Handler:
    """Every log record of this process at INFO and above (svp, DeepSpeed, Ray Train, warnings) appended to
    `folder/rank<N>.log`; a restarted worker appends to the same file."""
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / f"rank{rank}.log", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO) if root.level else logging.INFO)
    logging.getLogger("svp").setLevel(logging.INFO)
    for name in _OWN_HANDLER_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    logging.captureWarnings(True)
    logging.getLogger("svp.training").info(f"rank {rank}: logging to {folder / f'rank{rank}.log'}")
    return handler


def detach_rank_log(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    for name in _OWN_HANDLER_LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    handler.close()
