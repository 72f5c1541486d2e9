"""Sources: what to curate, where its caption is, and a content fingerprint.

An input is a local folder (searched recursively), a glob, any fsspec URI (`s3://bucket/raw/`,
`gs://…/*.mp4`), a single video, or a manifest (`.csv` / `.parquet` with a `uri` column and optionally a
`caption` column; relative URIs are relative to the manifest). Videos are recognised by extension; a caption
can also sit next to a video as `NAME.txt` or `NAME.json` (`{"caption": …}`).

The fingerprint (`source_id`) hashes the size and three 1 MiB windows (head, middle, tail): it changes when
the content changes, costs three reads instead of the whole file, and names the clips.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from dataclasses import asdict, dataclass
from typing import BinaryIO

import fsspec
import pandas as pd

from core.errors import UserError

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".parquet")
SIDECAR_SUFFIXES = (".txt", ".json")
_WINDOW = 1 << 20


@dataclass(frozen=True)
class SourceEntry:
    uri: str
    bytes: int
    mtime: str  # as the filesystem reports it ("" when it does not); part of the resume key
    caption: str | None = None  # from a manifest
    sidecar: str | None = None  # uri of a caption sidecar next to the video

    def to_row(self) -> dict:
        return asdict(self)


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return proto


def _full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Local files keep plain absolute paths; remote ones get their protocol back."""
    proto = _protocol(fs)
    return path if proto in ("file", "local") else f"{proto}://{path}"


def _mtime(info: dict) -> str:
    for key in ("mtime", "LastModified", "updated", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


def _has_extension(path: str, extensions: list[str]) -> bool:
    return path.lower().endswith(tuple(e.lower() for e in extensions))


def _strip_ext(path: str) -> str:
    return posixpath.splitext(path)[0]


def list_sources(input: str, extensions: list[str], exclude: str | None = None) -> list[SourceEntry]:
    """Every source named by `input`, sorted by uri. Files under the local folder `exclude` (the output
    folder, when it lies inside the input) are never sources. Raises FileNotFoundError when `input` names
    nothing."""
    if _has_extension(input, list(MANIFEST_SUFFIXES)) and not _is_glob(input):
        return _from_manifest(input)
    fs, path = fsspec.core.url_to_fs(input)
    is_folder = False
    if _is_glob(path):
        infos = {p: fs.info(p) for p in fs.glob(path)}
        infos = {p: i for p, i in infos.items() if i.get("type") == "file"}
    elif fs.isdir(path):
        infos, is_folder = fs.find(path, detail=True), True
    elif fs.isfile(path):
        infos = {path: fs.info(path)}
    else:
        raise FileNotFoundError(f"input not found: {input}")
    if exclude is not None and _protocol(fs) in ("file", "local"):
        inside = os.path.abspath(exclude).rstrip("/") + "/"
        infos = {p: i for p, i in infos.items() if not os.path.abspath(p).startswith(inside)}
    all_paths = set(infos)
    videos = sorted(p for p in infos if _has_extension(p, extensions))
    sidecar_paths = {p for p in all_paths if p.lower().endswith(SIDECAR_SUFFIXES)}
    others = (
        len(all_paths)
        - len(videos)
        - len({p for p in sidecar_paths if _strip_ext(p) in map(_strip_ext, videos)})
    )
    if others:
        log.info(
            "%s: %d files are not videos by extension (%s) and are not inputs",
            input,
            others,
            ", ".join(extensions),
        )
    if not is_folder:
        # A single file or a glob lists only what it names: look for each video's sidecar next to it, as
        # a folder listing would have found it.
        sidecar_paths |= {
            _strip_ext(p) + s for p in videos for s in SIDECAR_SUFFIXES if fs.isfile(_strip_ext(p) + s)
        }
    entries = []
    for p in videos:
        sidecar = next(
            (_strip_ext(p) + s for s in SIDECAR_SUFFIXES if _strip_ext(p) + s in sidecar_paths), None
        )
        entries.append(
            SourceEntry(
                uri=_full_uri(fs, p),
                bytes=int(infos[p].get("size") or 0),
                mtime=_mtime(infos[p]),
                sidecar=_full_uri(fs, sidecar) if sidecar else None,
            )
        )
    return entries


def _from_manifest(manifest: str) -> list[SourceEntry]:
    fs, path = fsspec.core.url_to_fs(manifest)
    if not fs.isfile(path):
        raise FileNotFoundError(f"manifest not found: {manifest}")
    with fs.open(path, "rb") as f:
        table = (
            pd.read_parquet(f)
            if path.lower().endswith(".parquet")
            else pd.read_csv(f, dtype=str, keep_default_na=False)
        )
    if "uri" not in table.columns:
        raise UserError(
            f"{manifest}: a manifest needs a 'uri' column (found: {', '.join(map(str, table.columns))})"
        )
    base = posixpath.dirname(path)
    entries = []
    for n, row in enumerate(table.itertuples(index=False), start=2):
        uri = str(row.uri or "").strip()
        if not uri:
            raise UserError(f"{manifest}: row {n} has an empty uri")
        caption = getattr(row, "caption", None) if "caption" in table.columns else None
        caption = (
            str(caption).strip()
            if caption is not None and not pd.isna(caption) and str(caption).strip()
            else None
        )
        if "://" not in uri and not posixpath.isabs(uri):
            uri = _full_uri(fs, posixpath.join(base, uri))
        entry_fs, entry_path = fsspec.core.url_to_fs(uri)
        try:
            info = entry_fs.info(entry_path)
        except FileNotFoundError:
            info = {"size": 0}  # stays an input: the worker rejects it with "file not found"
        entries.append(
            SourceEntry(uri=uri, bytes=int(info.get("size") or 0), mtime=_mtime(info), caption=caption)
        )
    return sorted(entries, key=lambda e: e.uri)


def open_source(uri: str) -> BinaryIO:
    """A seekable binary file for `uri` (local path or fsspec URI)."""
    return fsspec.open(uri, "rb").open()


def fingerprint(f: BinaryIO, size: int) -> str:
    """Content fingerprint: sha256 of the size and the head, middle and tail MiB (32 hex digits)."""
    h = hashlib.sha256(str(size).encode())
    offsets = [0] if size <= 3 * _WINDOW else [0, size // 2 - _WINDOW // 2, size - _WINDOW]
    for off in offsets:
        f.seek(off)
        h.update(f.read(_WINDOW if size > 3 * _WINDOW else size))
    f.seek(0)
    return h.hexdigest()[:32]


def read_sidecar(uri: str) -> str | None:
    """The caption in a `.txt` (whole text) or `.json` (`caption`, `text` or `prompt` key) sidecar."""
    with fsspec.open(uri, "rb") as f:
        raw = f.read().decode("utf-8", errors="replace")
    if uri.lower().endswith(".json"):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            raise UserError(f"caption sidecar {uri} is not valid JSON") from None
        raw = next(
            (str(data[k]) for k in ("caption", "text", "prompt") if isinstance(data, dict) and data.get(k)),
            "",
        )
    text = raw.strip()
    return text or None
