"""Deterministic tar shards and where each sample lies in them.

`write_tar` writes samples with fixed headers (mtime 0, root, mode 0644, PAX format), so the same samples give
the same bytes; `tar_layout` says from the member names and lengths alone where each sample's members lie,
which is what the index's `offset`/`length` columns (`curation.format.INDEX_COLUMNS`) record.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from core.atomic import atomic_write

TAR_BLOCK = 512
_TAR_FORMAT = tarfile.PAX_FORMAT
_TAR_ENCODING, _TAR_ERRORS = tarfile.ENCODING, "surrogateescape"  # what TarFile uses by default


def _padded(n: int) -> int:
    return -(-n // TAR_BLOCK) * TAR_BLOCK


def tar_member_size(n: int) -> int:
    """Tar bytes of a member with an `n`-byte body and a plain (non-PAX) header: a planning estimate."""
    return TAR_BLOCK + _padded(n)


def _member_info(key: str, ext: str, size: int) -> tarfile.TarInfo:
    """Fixed header fields (mtime 0, root, mode 0644): the same samples give the same bytes."""
    info = tarfile.TarInfo(f"{key}.{ext}")
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def tar_layout(samples: Iterable[tuple[str, Iterable[tuple[str, int]]]]) -> list[tuple[int, int]]:
    """`(offset, length)` of each sample (key, [(ext, data length)]) in the tar `write_tar` makes of them: the
    index's `offset`/`length` columns. Computed from the headers themselves (a long name adds a PAX header), so
    it holds for shards that a resumed run does not rewrite."""
    spans, position = [], 0
    for key, members in samples:
        total = 0
        for ext, length in members:
            header = _member_info(key, ext, length).tobuf(_TAR_FORMAT, _TAR_ENCODING, _TAR_ERRORS)
            total += len(header) + _padded(length)
        spans.append((position, total))
        position += total
    return spans


def write_tar(
    path: Path, samples: Sequence[tuple[str, Sequence[tuple[str, bytes]]]]
) -> list[tuple[int, int]]:
    """Write the samples (key, [(ext, data)]) as one tar atomically (`core.atomic`); returns each
    sample's `(offset, length)` (see `tar_layout`), checked against where the members really went."""
    spans = tar_layout((key, [(ext, len(data)) for ext, data in members]) for key, members in samples)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=_TAR_FORMAT) as tar:
            for (key, members), (offset, length) in zip(samples, spans, strict=True):
                for ext, data in members:
                    tar.addfile(_member_info(key, ext, len(data)), io.BytesIO(data))
                if tar.offset != offset + length:
                    raise RuntimeError(
                        f"{path.name}: sample {key} ends at byte {tar.offset}, not {offset + length}"
                    )

    atomic_write(path, write)
    return spans


def write_tar_streaming(
    path: Path, samples: Iterable[tuple[str, Sequence[tuple[str, bytes]]]]
) -> list[tuple[str, int, int]]:
    """`write_tar` for samples produced one at a time (only one sample's bytes in memory): the same headers,
    so the same samples in the same order give the same bytes; atomic as well. Returns (key, offset, length)
    of each sample as it went into the tar."""
    spans: list[tuple[str, int, int]] = []

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=_TAR_FORMAT) as tar:
            for key, members in samples:
                start = tar.offset
                for ext, data in members:
                    tar.addfile(_member_info(key, ext, len(data)), io.BytesIO(data))
                spans.append((key, start, tar.offset - start))

    atomic_write(path, write)
    return spans
