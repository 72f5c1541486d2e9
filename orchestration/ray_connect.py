"""Where `svp` starts or joins Ray: the one place with a connection policy.

The rule (the same for `svp curate`, `svp train`, `svp demo`, `svp pipeline run`):

- no `--address` and no `RAY_ADDRESS`: a private local Ray (`address="local"`), started for this command
  and stopped after it — never a cluster that happens to run on the machine (`ray start`, another user's);
- `--address auto` (the cluster started with `ray start` on this machine), `--address HOST:PORT` (the
  head's GCS port, 6379 by default: the driver runs here and joins the cluster as a node would, so it needs
  the cluster's Ray and Python versions and a network path to every node), `--address ray://HOST:10001` (Ray
  Client: the driver's work runs on the cluster; only the client port must be reachable), or `RAY_ADDRESS`
  set to any of these (a Ray job's entrypoint gets it from the job server): join that cluster.

The library functions (`curation.pipeline.run_curation`, `training.driver.stage_run.run_stage`) use the Ray that is
connected in their process and raise when there is none; they never choose an address themselves.
A cluster with token authentication (`RAY_AUTH_MODE=token`) needs its token here too: a refusal is one line
that says what to set instead of Ray's traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from core.errors import UserError
from orchestration.aborts import reclaim_sigterm

LOCAL = "local"


def target_address(address: str | None) -> str:
    """The address `connect` uses: `address`, else `RAY_ADDRESS`, else a private local Ray."""
    return (address or os.environ.get("RAY_ADDRESS") or LOCAL).strip()


# What a client of a cluster with token authentication sets: either way of giving the token works.
TOKEN_HINT = (
    "set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN, or in a file named by "
    "RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token; `ray get-auth-token` on the head prints it)"
)


def _auth_message(target: str) -> str:
    return f"the Ray cluster at {target} refused the connection: it uses token authentication; {TOKEN_HINT}"


def _is_auth_failure(err: BaseException) -> bool:
    from ray.exceptions import AuthenticationError

    text = f"{type(err).__name__} {err}"
    return isinstance(err, AuthenticationError) or any(
        marker in text for marker in ("InvalidAuthToken", "UNAUTHENTICATED", "Unauthenticated", "auth token")
    )


def choose_auth_mode(argv: list[str]) -> None:
    """Ray 2.60 reads RAY_AUTH_MODE once, when `ray` is first imported: a command that will start its own
    private Ray (no `--address`, no RAY_ADDRESS) sets token mode before anything imports Ray, or the local
    Ray it starts (token auth by default) refuses the driver. Call it first thing in a process."""
    joining = os.environ.get("RAY_ADDRESS") or any(
        a == "--address" or a.startswith("--address=") for a in argv
    )
    if not joining:
        _token_mode_if_not_imported()


def _token_mode_if_not_imported() -> None:
    """Token auth for the private Ray about to start, if Ray has not read the mode yet. Once `ray` is
    imported, setting it would reach only the processes Ray spawns (a GCS that wants a token), not this
    driver (which then sends none): it is left as it is, the same mode on both sides."""
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def connect(address: str | None = None, **init_kwargs: Any) -> bool:
    """Start or join Ray by the rule above. Returns True when this call connected (the caller then
    disconnects with `ray.shutdown()`), False when this process already was."""
    target = target_address(address)
    if target == LOCAL:
        _token_mode_if_not_imported()
    import ray

    if ray.is_initialized():
        return False
    init_kwargs.setdefault("configure_logging", False)
    if target == LOCAL:
        init_kwargs.setdefault("include_dashboard", False)
    else:
        # The core logs every refused connection attempt (20 lines of InvalidAuthToken); the one-line error
        # below says what matters.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    try:
        ray.init(address=target, **init_kwargs)
    except Exception as err:
        if _is_auth_failure(err):
            raise UserError(_auth_message(target)) from None
        if isinstance(err, ConnectionError | TimeoutError) or "connect" in str(err).lower():
            # A GCS that refuses the token only says so in the core's log lines, not in the exception.
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(
                f"cannot connect to the Ray cluster at {target} ({first}): check the address; if the cluster "
                f"uses token authentication, {TOKEN_HINT}"
            ) from None
        raise
    reclaim_sigterm()  # a SIGTERM must end the command cleanly (MLflow runs KILLED), not crash it
    return True


@contextlib.contextmanager
def ray_connection(address: str | None = None, **init_kwargs: Any) -> Iterator[None]:
    """`connect` for the duration of a block; disconnects only what it connected."""
    import ray

    started = connect(address, **init_kwargs)
    try:
        yield
    finally:
        if started:
            _join_ray_data_threads()
            ray.shutdown()


# Ray Data's driver-side threads: the streaming executor's loop and the block prefetchers of `iter_batches`.
RAY_DATA_THREADS = ("StreamingExecutor-", "iter_threaded", "Prefetcher")


def _join_ray_data_threads(timeout_s: float = 10.0) -> None:
    """Wait (bounded) for Ray Data's threads of an iteration that was closed to finish their last step. After a
    Ctrl-C one can still be inside a Ray call; under `ray.shutdown()` its next call ends the whole process on
    the spot with exit 1 ("The core worker has already been shutdown"), and the 130 of the interrupt is lost.
    (Callers close their iterations on the way out, `contextlib.closing`, so these threads are told to stop.)"""
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.name.startswith(RAY_DATA_THREADS):
            thread.join(max(0.0, deadline - time.monotonic()))
