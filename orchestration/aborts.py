"""Ctrl-C and SIGTERM: notice them whatever the libraries turn them into.

The KeyboardInterrupt of a Ctrl-C does not always reach the CLI: Ray Data shuts its executor down and may end
with "Dataset … execution failed", Ray Train installs its own SIGINT handler that aborts the run and calls
`sys.exit(0)`, and Ray's processes in the terminal's process group die of the same SIGINT, so the driver sees
their errors instead. So the CLI does not rely on the exception: `watch_interrupts` points the interpreter's
signal wake-up fd at a socket, which the C-level handler writes every signal number to *before* any Python
handler (ours or a library's) runs; `interrupt_received()` reads it.

SIGTERM (a scheduler, `kill`, Kubernetes stopping a pod) would otherwise end the process on the spot, leaving
MLflow runs RUNNING; while the block runs it raises `Terminated` (a KeyboardInterrupt) in the main thread
instead, so the same clean-up as for Ctrl-C runs (runs end KILLED). A command that saw either exits 128 + the
signal's number (130, 143) with `svp: aborted` however it ended.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)
_seen: dict[str, int | None] = {"signal": None}
_socket: dict[str, socket.socket | None] = {"read": None}


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the driver: handled like Ctrl-C (clean-up runs, MLflow runs end KILLED)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    # Only the first SIGTERM interrupts; a second one must not cut the clean-up the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated("SIGTERM")


@contextlib.contextmanager
def watch_interrupts() -> Iterator[None]:
    """Record every SIGINT/SIGTERM that arrives while the block runs (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _seen["signal"] = None
    if signal.getsignal(signal.SIGINT) in (signal.SIG_DFL, signal.SIG_IGN, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the wake-up fd needs a Python handler
    previous_term = signal.signal(signal.SIGTERM, _raise_terminated)
    read, write = socket.socketpair()
    read.setblocking(False)
    write.setblocking(False)
    previous = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
    _socket["read"] = read
    try:
        yield
    finally:
        interrupt_received()  # drain before the socket goes
        signal.set_wakeup_fd(previous)
        signal.signal(signal.SIGTERM, previous_term)
        _socket["read"] = None
        read.close()
        write.close()


def reclaim_sigterm() -> None:
    """Put our SIGTERM handler back after `ray.init`, which installs its own (`sys.exit`) and, below Python,
    a crash handler that aborts the process on SIGTERM before any clean-up runs (exit 134, runs left
    RUNNING). A no-op outside `watch_interrupts` or off the main thread."""
    if _socket["read"] is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def interrupt_received() -> int | None:
    """The first interrupting signal (SIGINT or SIGTERM) that arrived since `watch_interrupts` began."""
    read = _socket["read"]
    if read is not None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while data := read.recv(512):
                for signum in data:
                    if signum in INTERRUPTS and _seen["signal"] is None:
                        _seen["signal"] = signum
    return _seen["signal"]


def aborted_status(signum: int | None) -> int:
    """What shells report for a command stopped by `signum`: 128 + its number (130 when unknown: Ctrl-C)."""
    return 128 + int(signum or signal.SIGINT)
