"""Resume: a per-source completion manifest and per-source results under `OUT/.svp-work/`.

When every clip of a source has been scored, the driver writes the source's clips to
`results/<key>.parquet` (atomically) and then appends one JSON line to `manifest.jsonl` (flushed and
fsynced). A rerun skips a source whose line is there and whose size and modification time still match.
A run killed mid-append leaves a partial last line, which is ignored: that source is simply redone, and
because clip ids and scores are deterministic the redo writes the same rows. Results of another scoring
configuration are never mixed in: the folder records the configuration's fingerprint and is cleared when
it changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from core.atomic import atomic_write_text, fsync_dir
from curation.sources import SourceEntry
from curation.tables import clips_table, read_table, write_table_atomic

log = logging.getLogger(__name__)

WORK_DIR = ".svp-work"
MANIFEST = "manifest.jsonl"
RESULTS = "results"
FINGERPRINT = "scoring_fingerprint"


def _key(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:24]


class ResumeState:
    def __init__(self, out_dir: str | os.PathLike, scoring_fingerprint: str):
        self.dir = Path(out_dir) / WORK_DIR
        marker = self.dir / FINGERPRINT
        if self.dir.exists() and (not marker.exists() or marker.read_text().strip() != scoring_fingerprint):
            log.warning(
                "%s: the scoring configuration changed; earlier per-source results are discarded", self.dir
            )
            shutil.rmtree(self.dir)
        (self.dir / RESULTS).mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            atomic_write_text(marker, scoring_fingerprint + "\n")
        self.entries: dict[str, dict] = self._read_manifest()

    def _read_manifest(self) -> dict[str, dict]:
        path = self.dir / MANIFEST
        entries: dict[str, dict] = {}
        if not path.exists():
            return entries
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the tail of a run killed while appending
            if isinstance(entry, dict) and "uri" in entry:
                entries[entry["uri"]] = entry
        return entries

    def is_done(self, source: SourceEntry) -> bool:
        entry = self.entries.get(source.uri)
        if not entry or entry["bytes"] != source.bytes or entry["mtime"] != source.mtime:
            return False
        # An ok source is only done while its clips are still there.
        return entry["source"]["status"] != "ok" or self.results_path(source.uri).exists()

    def results_path(self, uri: str) -> Path:
        return self.dir / RESULTS / f"{_key(uri)}.parquet"

    def record(self, source: SourceEntry, row: dict, clips: pd.DataFrame | None) -> None:
        """Mark `source` finished with its sources-table `row` and (for ok sources) its scored clips."""
        if clips is not None:
            write_table_atomic(clips_table(clips), self.results_path(source.uri))
        entry = {"uri": source.uri, "bytes": source.bytes, "mtime": source.mtime, "source": row}
        with open(self.dir / MANIFEST, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.dir)  # the first line creates the file: its folder entry must last too
        self.entries[source.uri] = entry

    def source_row(self, uri: str) -> dict:
        return dict(self.entries[uri]["source"])

    def clips(self, uri: str) -> pd.DataFrame:
        path = self.results_path(uri)
        return read_table(path) if path.exists() else pd.DataFrame()
