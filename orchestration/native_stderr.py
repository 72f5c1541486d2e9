"""Keep Ray's C++ log lines off the console: a filter between file descriptor 2 and the real stderr.

Ray's core (the driver's core worker) writes its own log lines straight to file descriptor 2, beneath Python's
`logging`: every ERROR of the core also goes there (e.g. `core_worker.cc … max_restarts > 0`, which Ray Data's
actor pools cause on every curation), and setting RAY_BACKEND_LOG_LEVEL adds a `logging.cc` INFO line of its
own. The same lines are in the Ray session's log files (`python-core-driver-*.log`), so the console loses
nothing by not showing them.

`filter_native_stderr()` points descriptor 2 at a small filter process (this file, run as a script) that
copies everything to the real stderr except those lines (`[DATE TIME I|W|E PID TID] file.cc:N: …`); svp's
messages, tracebacks and a FATAL of the core with its stack pass unchanged, partial lines (progress redraws) at
once. On a terminal the filter reads a pseudo-terminal, so `isatty()` and the width stay what they were. The
filter ignores Ctrl-C and SIGTERM (they are for svp, which may still have an error to print) and ends when the
last writer closes; a crash of svp loses none of its last output.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import sys

# A line of Ray's C++ logger at INFO, WARNING or ERROR (FATAL lines and their stack traces pass).
RAY_NATIVE_LINE = re.compile(rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [IWE] \d+ \d+\] ")
_HEAD_MAX = 80  # a line start shorter than this that opens with "[" may still turn out to be Ray's
_state: dict[str, object] = {}


def filter_native_stderr() -> None:
    """Send descriptor 2 through the filter for the rest of this process (once; later calls do nothing)."""
    if _state:
        return
    sys.stderr.flush()
    if os.isatty(2):
        read_end, write_end = os.openpty()
        _copy_terminal(2, write_end)
    else:
        read_end, write_end = os.pipe()
    child = subprocess.Popen(  # noqa: S603 - this file, no shell
        [sys.executable, "-I", "-S", os.path.abspath(__file__)], stdin=read_end, stdout=2, close_fds=True
    )
    _state.update(saved=os.dup(2), child=child)
    os.dup2(write_end, 2)
    os.close(write_end)
    os.close(read_end)
    atexit.register(_finish)


def _copy_terminal(tty: int, pty: int) -> None:
    """The pseudo-terminal takes the real one's size, and passes bytes as they are (no CR added to LF)."""
    import fcntl
    import termios
    import tty as tty_modes

    with contextlib.suppress(OSError):
        fcntl.ioctl(pty, termios.TIOCSWINSZ, fcntl.ioctl(tty, termios.TIOCGWINSZ, b"\0" * 8))
    tty_modes.setraw(pty)


def _finish(timeout_s: float = 5.0) -> None:
    """At exit: give descriptor 2 back and let the filter write out what it still holds."""
    sys.stderr.flush()
    saved, child = _state["saved"], _state["child"]
    os.dup2(saved, 2)  # the filter's last writer here is gone: it sees the end of its input
    # Another process may still hold the pipe: then the filter ends with that one.
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout_s)  # type: ignore[union-attr]


def _write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def filter_stream(src: int, dst: int) -> None:
    """Copy `src` to `dst` until its end, without Ray's native log lines."""
    mode, pending = "start", b""  # start of a line / passing one / dropping one
    while True:
        try:
            chunk = os.read(src, 65536)
        except OSError:  # a pseudo-terminal whose last writer closed
            chunk = b""
        if not chunk:
            if pending and not RAY_NATIVE_LINE.match(pending):
                _write(dst, pending)
            return
        data, pending = pending + chunk, b""
        while data:
            end = data.find(b"\n")
            piece = data if end < 0 else data[: end + 1]
            if mode == "start":
                if RAY_NATIVE_LINE.match(piece):
                    mode = "drop"
                elif end < 0 and piece.startswith(b"[") and b"]" not in piece and len(piece) < _HEAD_MAX:
                    pending = piece  # too short to tell yet: wait for more
                    break
                else:
                    mode = "pass"
            if mode == "pass":
                _write(dst, piece)
            data = data[len(piece) :]
            if end >= 0:
                mode = "start"


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    filter_stream(0, 1)
