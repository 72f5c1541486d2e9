"""Files that survive a crash or a power loss whole: the old version or the new one, never half of either.

Every file the resume logic trusts (per-source results, manifests, indexes, shards, thresholds, the report)
goes through `atomic_write`: write a temp file in the same folder, fsync it, rename it over the target, fsync
the folder (without that last step the rename itself can be lost on power failure, leaving the old file
or, for a new one, none). The temp name is `.<name>.tmp`: writers clean such leftovers of a killed run.
Every package writes through it: it lives in `core/`, below model, curation, training and orchestration.

The file gets the mode `open()` would give it (0666 less the umask), whatever wrote the temp file: safetensors
writes 0600 (as `mkstemp` does), and weights nobody else can read are of no use on shared storage (an MLflow
server, pods under another uid, a colleague's `svp generate`). A folder (a stage's export) is replaced by
renames only (`replace_folder`), never deleted before the new one is in place.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """Where `atomic_write` writes `path` before renaming it (same folder: the rename stays atomic)."""
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask_mode() -> int:
    """The mode `open()` gives a new file: 0666 less the process's umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # Linux says it without changing it; elsewhere set and restore it (a moment when another thread's new
    # file could get the wrong mode, so only where there is no other way).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_umask_mode(path: str | os.PathLike) -> None:
    """Set `path`'s mode to what `open()` would have given it (see the module docstring)."""
    os.chmod(path, umask_mode())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(temp)` to write the new content to a temp file, then fsync it, rename it to `path` and
    fsync the folder. If `write` fails, `path` is untouched and the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        give_umask_mode(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def replace_folder(new: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the complete folder `new` at `target` by renames only: the old `target` is renamed aside, `new`
    renamed in, then the old one deleted. A crash leaves the old folder whole (aside, at `.<name>.old`) or
    the new one in place, never a half-deleted one under `target`'s name."""
    new, target = Path(new), Path(target)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)  # a crash's leftover: the folder it replaced was complete
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target
