"""One driver per stage: a lock file that keeps a second `svp train` / `svp pipeline run` off a stage that
another driver trains into the same work dir (same Ray run folder, checkpoints, MLflow run and export).

The lock is a file created with O_CREAT|O_EXCL (atomic on local disks and on NFSv3+ shared storage), which
holds its holder's host, pid and start time as JSON. While the stage trains, the holder touches it every
`HEARTBEAT_S` seconds, and removes it when it exits (normally, on an error, on Ctrl-C or SIGTERM). A holder
killed outright (SIGKILL, a lost node) leaves it behind; it is stale, and taken over, when its pid is dead on
this host, or when its heartbeat is older than `STALE_AFTER_S` (another host, whose pids this host cannot
see; or this host's pid since reused by another process). A driver that finds a live holder refuses at once with one line naming it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from core.errors import UserError

log = logging.getLogger("svp.training")

LOCK_FILE = "driver.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 10 * 60.0  # ten missed heartbeats and more: no live driver goes that long without one


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    since: str  # UTC, ISO 8601
    token: str  # tells this holder's file from a later one at the same path

    @classmethod
    def me(cls) -> LockHolder:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return cls(socket.gethostname(), os.getpid(), since, uuid.uuid4().hex)


class StageLockedError(UserError):
    """Another live driver holds the stage."""


def read_holder(path: Path) -> LockHolder | None:
    """The holder recorded in `path`; None when the file is gone, or unreadable (a holder still writing
    it, or a damaged file: judged by its age alone)."""
    try:
        return LockHolder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def stale_reason(path: Path, holder: LockHolder | None, stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why the lock at `path` no longer stands for a live driver, or None while it does."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return "gone"
    if holder is not None and holder.host == socket.gethostname() and not _pid_alive(holder.pid):
        return f"pid {holder.pid} on this host has exited"
    if age > stale_after_s:
        return f"no heartbeat for {age / 60:.0f} min"
    return None


def locked_message(stage: str, path: Path, holder: LockHolder | None) -> str:
    if holder is None:
        return f"stage {stage!r} is being trained by another driver (lock {path})"
    return f"stage {stage!r} is being trained by host {holder.host} pid {holder.pid} since {holder.since} (lock {path})"


def check_unlocked(path: Path, stage: str, stale_after_s: float = STALE_AFTER_S) -> None:
    """Raise `StageLockedError` when a live driver holds the lock at `path` (reads only: the pre-flight)."""
    if not path.exists():
        return
    holder = read_holder(path)
    if stale_reason(path, holder, stale_after_s) is None:
        raise StageLockedError(locked_message(stage, path, holder))


class StageLock:
    """`with StageLock(path, stage):` holds the stage for this process (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        stage: str,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        self.path, self.stage = Path(path), stage
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.holder = LockHolder.me()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> StageLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # a takeover raced by another driver: look again
            if self._create():
                self._start_heartbeat()
                return
            holder = read_holder(self.path)
            why = stale_reason(self.path, holder, self.stale_after_s)
            if why is None:
                raise StageLockedError(locked_message(self.stage, self.path, holder))
            self._remove_stale(holder, why)
        raise StageLockedError(locked_message(self.stage, self.path, read_holder(self.path)))

    def _create(self) -> bool:
        """Create the lock with our record, or False when it exists. Written through a file opened with
        O_EXCL and fsynced before anyone can judge it by content (until then a reader sees it as young)."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(asdict(self.holder)))
            out.flush()
            os.fsync(out.fileno())
        return True

    def _remove_stale(self, holder: LockHolder | None, why: str) -> None:
        """Move the stale lock aside under a name of our own (atomic: of two drivers taking over the same
        lock, one moves it), then make sure what was moved is the stale one; a fresh lock that another
        driver made in between goes back."""
        aside = self.path.with_name(f"{self.path.name}.stale-{self.holder.token}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        if stale_reason(aside, read_holder(aside), self.stale_after_s) is None:
            with contextlib.suppress(FileExistsError):  # put it back, unless yet another lock is there
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        who = f"host {holder.host} pid {holder.pid} since {holder.since}" if holder else "an unknown driver"
        log.warning(f"stage {self.stage}: took over the lock {self.path} left by {who} ({why})")

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"svp-lock-{self.stage}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError as err:  # shared storage away for a moment: the next beat tries again
                log.warning(f"stage {self.stage}: could not refresh the lock {self.path}: {err}")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still ours."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if read_holder(self.path) == self.holder:
            self.path.unlink(missing_ok=True)
