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
import time
from collections.abc import Callable, Iterator


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
    deadline = time.monotonic() + wait_s
    while pids_in_group(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
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


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float, before: str) -> None:
    """Poll `ready()` while `proc` runs; fail (with its output) if it ended first or `ready()` never held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    if proc.poll() is not None:
        output = proc.stdout.read()
        raise AssertionError(
            f"finished before {before}:\n" + (output if isinstance(output, str) else output.decode())[-3000:]
        )
    assert ready(), f"not ready for {before} within {timeout_s} s"
