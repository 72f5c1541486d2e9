"""Stage fingerprints: what determines a stage's export, recorded beside it, so a rerun knows what changed.

A stage's fingerprint hashes its inputs: the resolved stage config, the dataset fingerprint (shard index:
names, keys, sizes), the fingerprint of the export it starts from (`init_from`), and the platform version.
It is written as `export/fingerprint.json` after the export folder is complete (the export itself is renamed
into place atomically first), with the size of every export file, so a half-written, truncated or
hand-edited export is never taken for a finished one. Every fingerprint a stage has trained under is also
kept in `<stage>/fingerprints/<fingerprint>.json`, which is what lets a message say which key changed when a
Ray run folder of an older fingerprint is not resumed.

A stage is skipped only when its export is complete and its recorded fingerprint is the current one. A
superseded export is moved to `<stage>/exports/<its fingerprint>/` (never deleted); `export/` is always the
current one. The world size is not an input: resuming on another number of workers is supported.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_text
from core.digest import digest
from training.worker.checkpoints import EXPORT_STATE_FILE

FINGERPRINT_FILE = "fingerprint.json"
HISTORY_DIR = "fingerprints"
SUPERSEDED_DIR = "exports"
_REQUIRED_EXPORT_FILES = ("model.safetensors", "config.json", EXPORT_STATE_FILE)


@cache
def platform_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("svp")
    except PackageNotFoundError:  # running from a checkout that is not installed
        return "unknown"


@dataclass(frozen=True)
class StageInputs:
    """What determines a stage's export. `init_from` is the fingerprint of the export (or weights) it
    starts from, None for a stage trained from scratch."""

    config: dict[str, Any]
    dataset: str
    init_from: str | None
    platform: str

    @property
    def fingerprint(self) -> str:
        return digest(
            {
                "config": digest(self.config),
                "dataset": self.dataset,
                "init_from": self.init_from,
                "platform": self.platform,
            }
        )

    def record(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "config": self.config,
            "dataset": self.dataset,
            "init_from": self.init_from,
            "platform": self.platform,
        }


def flat_config(config: Mapping[str, Any]) -> dict[str, str]:
    from training.config.schema import flatten

    return flatten(dict(config))


def explain_change(old: Mapping[str, Any] | None, new: StageInputs) -> str:
    """Which inputs differ between an old fingerprint record and `new`: `optimizer.lr 0.001 -> 0.0005`,
    `dataset 1a2b… -> 3c4d…`; "unknown earlier inputs" when there is no old record to compare with."""
    if not old:
        return "no record of the earlier fingerprint's inputs"
    changes = []
    old_flat, new_flat = flat_config(old.get("config") or {}), flat_config(new.config)
    for key in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(key) != new_flat.get(key):
            changes.append(f"{key} {old_flat.get(key, '(unset)')} -> {new_flat.get(key, '(unset)')}")
    for key in ("dataset", "init_from", "platform"):
        if old.get(key) != getattr(new, key):
            changes.append(f"{key} {old.get(key)} -> {getattr(new, key)}")
    return "; ".join(changes) or "inputs equal, fingerprint scheme changed"


def _atomic_write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """fsynced and renamed into place: `fingerprint.json` is the marker that an export is complete."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def write_export_fingerprint(export_dir: Path, inputs: StageInputs) -> None:
    """Mark a complete export as the output of `inputs` (called last, after the export is in place)."""
    export_dir = Path(export_dir)
    files = {
        str(p.relative_to(export_dir)): p.stat().st_size
        for p in sorted(export_dir.rglob("*"))
        if p.is_file() and p.name != FINGERPRINT_FILE
    }
    _atomic_write_json(export_dir / FINGERPRINT_FILE, {**inputs.record(), "files": files})


def remember(stage_folder: Path, inputs: StageInputs) -> None:
    """Keep the inputs of a fingerprint this stage trains under (to explain later changes)."""
    _atomic_write_json(Path(stage_folder) / HISTORY_DIR / f"{inputs.fingerprint}.json", inputs.record())


def recall(stage_folder: Path, fingerprint: str) -> dict[str, Any] | None:
    path = Path(stage_folder) / HISTORY_DIR / f"{fingerprint}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def export_record(export_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """(record, "") for a complete export, else (None, why it does not count as finished)."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        return None, "no export yet"
    try:
        record = json.loads((export_dir / FINGERPRINT_FILE).read_text())
        files = dict(record["files"])
        record["fingerprint"]
    except FileNotFoundError:
        return (
            None,
            f"export at {export_dir} has no {FINGERPRINT_FILE} (unfinished, or written before fingerprints)",
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"export at {export_dir} has an unreadable {FINGERPRINT_FILE}"
    for name in _REQUIRED_EXPORT_FILES:
        if name not in files:
            return None, f"export at {export_dir} lists no {name}"
    for name, size in files.items():
        path = export_dir / name
        if not path.is_file():
            return None, f"export at {export_dir} is missing {name}"
        if path.stat().st_size != size:
            return None, f"export at {export_dir}: {name} is {path.stat().st_size} bytes, {size} when written"
    return record, ""


def weights_fingerprint(path: Path) -> str:
    """The fingerprint of weights a stage starts from: a stage export's own fingerprint, else a hash of the
    names, sizes and modification times of the files (weights from elsewhere; not read: they can be GBs)."""
    path = Path(path)
    record, _ = export_record(path) if path.is_dir() else (None, "")
    if record is not None:
        return record["fingerprint"]
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return digest([(str(p.relative_to(path) if path.is_dir() else p.name), *_stat(p)) for p in files])


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def supersede_export(stage_folder: Path) -> Path | None:
    """Move `<stage>/export` aside to `<stage>/exports/<its fingerprint>[-n]/`; returns where, or None when
    there was nothing to move. An export without a readable fingerprint goes to `exports/unfingerprinted`."""
    export_dir = Path(stage_folder) / "export"
    if not export_dir.exists():
        return None
    try:
        name = json.loads((export_dir / FINGERPRINT_FILE).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        name = "unfingerprinted"
    target = _free_name(Path(stage_folder) / SUPERSEDED_DIR / str(name))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(export_dir), str(target))
    return target


def _free_name(path: Path) -> Path:
    if not path.exists():
        return path
    n = 2
    while path.with_name(f"{path.name}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}-{n}")


def set_aside(folder: Path) -> Path:
    """Rename a folder to `<folder>.superseded[-n]` (kept for comparison, never resumed again)."""
    target = _free_name(folder.with_name(folder.name + ".superseded"))
    os.replace(folder, target)
    return target
