"""Errors that a retry cannot fix, and the Ray Train callback that stops retries for them.

Ray Train V2 retries every worker failure up to `FailureConfig.max_failures` and has no notion of an error
that will happen again on the next attempt (a bad config, a checkpoint whose shapes do not fit the model, a
ZeRO checkpoint written by another world size). Retrying those only burns minutes per attempt and buries
the message. `FailFastCallback` runs on the Ray Train controller: when a worker raised one of them, it
raises it there, which Ray treats as a controller error — not retried — and `fit()` re-raises at once.
"""

from __future__ import annotations

from collections.abc import Mapping

from ray.train import UserCallback
from ray.train.v2.api.exceptions import ControllerError, TrainingFailedError, WorkerGroupError

from core.errors import UserError


class NonRetryableError(UserError):
    """Training cannot succeed by retrying; the message says what to change.

    A UserError so that `svp` prints it as one line (`svp: error: …`) and exits 2.
    """


class StageConfigError(NonRetryableError):
    """The stage config is invalid or inconsistent with what is on disk."""


class ShapeMismatchError(NonRetryableError):
    """Weights do not fit the model (init_from, export, checkpoint)."""


class WorldSizeMismatchError(NonRetryableError):
    """A plain ZeRO checkpoint was written by another data-parallel world size."""


def as_non_retryable(error: BaseException) -> NonRetryableError | None:
    """The non-retryable form of `error`, or None when a retry might help (process death, OOM, network)."""
    if isinstance(error, NonRetryableError):
        return error
    # DeepSpeed raises this when the optimizer partitions were written by another DP world size.
    if type(error).__name__ == "ZeRORuntimeException" and "world size" in str(error):
        return WorldSizeMismatchError(
            f"{error} — resume on the original number of workers, or let `svp train` convert the "
            "checkpoint to a universal one (it does so when it sees the world size change)"
        )
    cause = error.__cause__
    if cause is not None and cause is not error:
        return as_non_retryable(cause)
    return None


class FailFastCallback(UserCallback):
    """Turn a worker's non-retryable error into a controller error so Ray does not retry it."""

    def after_exception(self, run_context: object, worker_exceptions: Mapping[int, Exception]) -> None:
        for rank in sorted(worker_exceptions):
            fatal = as_non_retryable(worker_exceptions[rank])
            if fatal is not None:
                raise type(fatal)(f"rank {rank}: {fatal}")


def unwrap_training_error(error: TrainingFailedError) -> BaseException:
    """The error a user should see for a failed `fit()`: our own message when there is one."""
    if isinstance(error, ControllerError):
        fatal = as_non_retryable(error.controller_failure)
        if fatal is not None:
            return fatal
    if isinstance(error, WorkerGroupError):
        for rank in sorted(error.worker_failures):
            fatal = as_non_retryable(error.worker_failures[rank])
            if fatal is not None:
                return fatal
    return error
