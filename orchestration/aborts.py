"""Ctrl-C: notice it whatever the libraries turn it into.

The KeyboardInterrupt of a Ctrl-C does not always reach the CLI: Ray Data shuts its executor down and may end
with "Dataset … execution failed", Ray Train installs its own SIGINT handler that aborts the run and calls
`sys.exit(0)`, and Ray's processes in the terminal's process group die of the same SIGINT, so the driver sees
their errors instead. So the CLI does not rely on the exception: `watch_sigint` points the interpreter's
signal wake-up fd at a socket, which the C-level handler writes every signal number to *before* any Python
handler (ours or a library's) runs; `sigint_received()` reads it. A command that saw a SIGINT exits 130 with
`svp: aborted` however it ended.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator

_seen = {"sigint": False}
_socket: dict[str, socket.socket | None] = {"read": None}


@contextlib.contextmanager
def watch_sigint() -> Iterator[None]:
    """Record every SIGINT that arrives while the block runs (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _seen["sigint"] = False
    if signal.getsignal(signal.SIGINT) in (signal.SIG_DFL, signal.SIG_IGN, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the wake-up fd needs a Python handler
    read, write = socket.socketpair()
    read.setblocking(False)
    write.setblocking(False)
    previous = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
    _socket["read"] = read
    try:
        yield
    finally:
        sigint_received()  # drain before the socket goes
        signal.set_wakeup_fd(previous)
        _socket["read"] = None
        read.close()
        write.close()


def sigint_received() -> bool:
    """Whether a SIGINT arrived since `watch_sigint` began."""
    read = _socket["read"]
    if read is not None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while data := read.recv(512):
                if signal.SIGINT in data:
                    _seen["sigint"] = True
    return _seen["sigint"]
