"""Files that survive a crash or a power loss whole: the old version or the new one, never half of either.

Every file the resume logic trusts (per-source results, manifests, indexes, shards, thresholds, the report)
goes through `atomic_write`: write a temp file in the same folder, fsync it, rename it over the target, fsync
the folder (without that last step the rename itself can be lost on power failure, leaving the old file
or, for a new one, none). The temp name is `.<name>.tmp`: writers clean such leftovers of a killed run.
Training imports this through `curation.format` (the one curation module it may import).
"""

from __future__ import annotations

import os
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


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(temp)` to write the new content to a temp file, then fsync it, rename it to `path` and
    fsync the folder. If `write` fails, `path` is untouched and the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
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
