"""The processes of a command run in its own session (`start_new_session=True`): Ray's daemons and workers
inherit its process group, so the tests can signal, count and clean up the whole run."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

from waiting import wait_until


def pids_in_group(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except ProcessLookupError:
                pass
    return pids


def reap_group(pgid: int, wait_s: float = 5.0) -> int:
    """Wait up to `wait_s` for the group to empty, then SIGKILL what is left; returns how many were left."""
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not pids_in_group(pgid), wait_s, f"end of process group {pgid}")
    left = pids_in_group(pgid)
    for pid in left:  # never leave anything of ours running, even on failure
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(left)


@contextlib.contextmanager
def own_session_svp(
    args: list[str],
    *,
    drop_env: tuple[str, ...] = (),
    set_env: dict[str, str] | None = None,
    text: bool = False,
) -> Iterator[subprocess.Popen]:
    """`svp ARGS` as a terminal would run it: in its own session (so a signal can go to its whole process
    group, Ray's daemons and workers included) with its own private Ray (RAY_ADDRESS dropped, RAY_TMPDIR its
    own, short: Ray's socket paths must fit 107 bytes); stdout and stderr together. On the way out the whole
    group is reaped and the Ray folder removed."""
    ray_tmp = tempfile.mkdtemp(prefix="svp", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", *drop_env)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", *args],
        env={**env, **(set_env or {}), "RAY_TMPDIR": ray_tmp},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=text,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        reap_group(proc.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def wait_while_running(
    proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float, before: str
) -> None:
    """Poll `ready()` while `proc` runs; fail (with its output) if it ended first or `ready()` never held."""

    def check() -> bool:
        if proc.poll() is not None:
            output = proc.stdout.read()
            raise AssertionError(
                f"finished before {before}:\n"
                + (output if isinstance(output, str) else output.decode())[-3000:]
            )
        return ready()

    wait_until(check, timeout_s, f"readiness for {before}", interval=0.02)
