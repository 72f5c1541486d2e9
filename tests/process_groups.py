"""The processes of a command run in its own session (`start_new_session=True`): Ray's daemons and workers
inherit its process group, so the tests can signal, count and clean up the whole run."""

from __future__ import annotations

import contextlib
import os
import signal
import time


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
