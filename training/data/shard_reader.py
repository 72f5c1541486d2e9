"""Random access to samples inside WebDataset tar shards, local or behind any fsspec URI.

The training loader is index-driven (`index.parquet`, see `curation.format`): it decides which sample goes in
which batch from the index alone, then reads just those samples. The index's `offset`/`length` columns give each
sample's byte span in its tar, so a sample is one ranged read (one request on object storage), parsed as a run
of tar members; a ranged read that fails with a transient error is retried with backoff (`read_with_retries`).
An index written before those columns existed has none: then the first read of a shard scans its tar headers once (seeking past the member data) and keeps a member table per shard for the life of the
process. Members are grouped into samples with WebDataset's own naming rule
(`webdataset.tariterators.base_plus_ext`: key up to the first dot).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import tarfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import fsspec
import pandas as pd
from webdataset.tariterators import base_plus_ext

from curation.format import INDEX_COLUMNS, INDEX_FILE, INDEX_SPAN_COLUMNS, SHARDS_DIR, is_safe_relative

log = logging.getLogger(__name__)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join_uri(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def _exists(uri: str) -> bool:
    if not is_remote(uri):
        return os.path.isfile(uri.removeprefix("file://"))
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.isfile(path)


def find_shard_folder(entry: str) -> str:
    """The folder holding `index.parquet`: `entry` itself (a shards folder) or `entry/shards` (a curation
    output folder). FileNotFoundError naming both places otherwise."""
    if not is_remote(entry) and not os.path.exists(entry.removeprefix("file://")):
        raise FileNotFoundError(f"data folder {entry} does not exist")
    for folder in (entry, join_uri(entry, SHARDS_DIR)):
        if _exists(join_uri(folder, INDEX_FILE)):
            return folder
    raise FileNotFoundError(
        f"no {INDEX_FILE} in {entry} or {join_uri(entry, SHARDS_DIR)} (give a shards folder or a curation output)"
    )


def read_index(folder: str) -> pd.DataFrame:
    """The index of one shards folder, checked against the contract: all columns present and shard names
    that stay inside the folder. An older index without `offset`/`length` gets them as -1 (no span: the reader
    scans that shard's headers)."""
    uri = join_uri(folder, INDEX_FILE)
    table = pd.read_parquet(uri)
    missing = [c for c in INDEX_COLUMNS if c not in table.columns and c not in INDEX_SPAN_COLUMNS]
    if missing:
        raise ValueError(f"{uri}: missing index columns {', '.join(missing)}")
    for column in INDEX_SPAN_COLUMNS:
        values = table[column] if column in table.columns else pd.Series(-1, index=table.index)
        table[column] = values.fillna(-1).astype("int64")
    for shard in table["shard"].unique():
        if not is_safe_relative(str(shard)):
            raise ValueError(f"{uri}: shard name {shard!r} points outside the folder")
    return table[list(INDEX_COLUMNS)].reset_index(drop=True)


# Object storage fails now and then (a reset connection, a timeout, a 503 surfacing as OSError): a ranged read
# is tried this many times, waiting RETRY_BACKOFF_S, then twice that, ... between tries. What still fails is a
# bad sample (the loader skips and counts it as `read_error`). Errors that retrying cannot fix are not retried.
READ_ATTEMPTS = 4
RETRY_BACKOFF_S = 0.05
_PERMANENT_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
_TRANSIENT_ERRORS = (OSError, TimeoutError, ConnectionError, asyncio.TimeoutError)


def read_with_retries(read: Callable[[], bytes], what: str) -> bytes:
    """`read()`, tried again with exponential backoff after a transient error (bounded: READ_ATTEMPTS)."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return read()
        except _PERMANENT_ERRORS:
            raise
        except _TRANSIENT_ERRORS as err:
            if attempt == READ_ATTEMPTS - 1:
                raise OSError(
                    f"{what}: read failed {READ_ATTEMPTS} times, last: {type(err).__name__}: {err}"
                ) from err
            log.warning("%s: %s: %s; trying again", what, type(err).__name__, err)
            time.sleep(RETRY_BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class MemberSpan:
    offset: int
    size: int


class ShardReader:
    """Reads sample members by (shard URI, key). Not shared across processes: each dataloader worker makes
    its own (file handles do not survive a fork), which `for_this_process` takes care of. Shared by threads
    (`svp encode` decodes a shard on a thread pool): an open shard is one file position, so a seek and the
    read after it, and the open-file cache, are one thread's at a time."""

    def __init__(self, max_open: int = 16) -> None:
        self.max_open = max_open
        self._pid = os.getpid()
        self._files: OrderedDict[str, IO[bytes]] = OrderedDict()
        self._remote: dict[str, tuple[fsspec.AbstractFileSystem, str]] = {}
        self._members: dict[str, dict[str, dict[str, MemberSpan]]] = {}
        self._lock = threading.RLock()

    def for_this_process(self) -> ShardReader:
        if self._pid != os.getpid():
            self._files = OrderedDict()
            self._remote = {}
            self._lock = threading.RLock()  # a fork copies a lock as another thread held it
            self._pid = os.getpid()
        return self

    def read_sample(self, shard: str, key: str, span: tuple[int, int] | None = None) -> dict[str, bytes]:
        """All members of sample `key` in `shard`, keyed by extension (`mp4`, `json`, `txt`, …).

        `span`: the sample's `(offset, length)` from the index: one ranged read, no header scan. Without it the
        shard's headers are scanned (once per process), and a key that is not in the shard gives an empty dict.
        """
        if span is not None:
            return self._read_span(shard, key, *span)
        out = {}
        with self.for_this_process()._lock:
            members = self._member_table(shard).get(key, {})
            handle = self._open(shard)
            for ext, span in members.items():
                handle.seek(span.offset)
                out[ext] = handle.read(span.size)
        for ext, span in members.items():
            if len(out[ext]) != span.size:
                raise OSError(f"{shard}: member {key}.{ext} is truncated")
        return out

    def _read_span(self, shard: str, key: str, offset: int, length: int) -> dict[str, bytes]:
        data = self._read_range(shard, offset, length)
        if len(data) != length:
            raise OSError(f"{shard}: sample {key} at bytes {offset}+{length} is truncated")
        out = {}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                member_key, ext = base_plus_ext(info.name)
                if member_key != key:
                    raise OSError(
                        f"{shard}: bytes {offset}+{length} hold {info.name}, not a member of sample {key}"
                    )
                out[ext] = tar.extractfile(info).read()
        return out

    def _read_range(self, shard: str, offset: int, length: int) -> bytes:
        if not is_remote(shard):
            with self.for_this_process()._lock:
                handle = self._open(shard)
                handle.seek(offset)
                return handle.read(length)
        self.for_this_process()
        if shard not in self._remote:
            self._remote[shard] = fsspec.core.url_to_fs(shard)
        fs, path = self._remote[shard]
        return read_with_retries(lambda: fs.cat_file(path, start=offset, end=offset + length), shard)

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()

    def _open(self, shard: str) -> IO[bytes]:
        self.for_this_process()
        if shard in self._files:
            self._files.move_to_end(shard)
            return self._files[shard]
        if is_remote(shard):
            fs, path = fsspec.core.url_to_fs(shard)
            handle = fs.open(path, "rb")
        else:
            handle = open(shard.removeprefix("file://"), "rb")  # noqa: SIM115 - kept open in the LRU
        self._files[shard] = handle
        while len(self._files) > self.max_open:
            self._files.popitem(last=False)[1].close()
        return handle

    def _member_table(self, shard: str) -> dict[str, dict[str, MemberSpan]]:
        if shard not in self._members:
            table: dict[str, dict[str, MemberSpan]] = {}
            # "r:" (not "r|") lets tarfile seek over member data, so only the headers are read.
            with tarfile.open(fileobj=self._open(shard), mode="r:") as tar:
                for info in tar:
                    if not info.isreg():
                        continue
                    key, ext = base_plus_ext(info.name)
                    if key is None:
                        continue
                    table.setdefault(key, {})[ext] = MemberSpan(info.offset_data, info.size)
            self._members[shard] = table
        return self._members[shard]
