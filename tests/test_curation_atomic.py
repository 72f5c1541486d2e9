"""Crash-safe writes: a process killed between writing a file and renaming it leaves the old file whole,
and the resume logic that trusts it picks up where it was."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from core.atomic import atomic_write, atomic_write_bytes, temp_path
from curation.resume import ResumeState
from curation.sources import SourceEntry
from curation.tables import read_table

SOURCE = SourceEntry(uri="/videos/a.mp4", bytes=1234, mtime="1")
ROW = {"uri": SOURCE.uri, "status": "ok", "reason": "", "num_clips": 1}


def _clips(caption: str) -> pd.DataFrame:
    return pd.DataFrame({"clip_id": ["c1"], "uri": [SOURCE.uri], "caption": [caption]})


def test_a_process_killed_between_write_and_rename_leaves_the_old_results_and_resume_holds(tmp_path):
    ResumeState(tmp_path, "fp").record(SOURCE, ROW, _clips("old"))
    results = ResumeState(tmp_path, "fp").results_path(SOURCE.uri)
    # A second run rewrites the same results file and dies (no cleanup, like a power cut) after the new
    # bytes are written but before the rename.
    crash = textwrap.dedent(f"""
        import os, pyarrow as pa, pyarrow.parquet as pq
        from core.atomic import atomic_write
        def write_then_die(tmp):
            pq.write_table(pa.table({{"clip_id": ["c1"], "caption": ["new"]}}), tmp)
            os._exit(9)
        atomic_write({str(results)!r}, write_then_die)
    """)
    assert subprocess.run([sys.executable, "-c", crash], check=False).returncode == 9
    assert temp_path(results).is_file()  # the half-finished write is there, under its temp name only

    resumed = ResumeState(tmp_path, "fp")
    assert resumed.is_done(SOURCE)
    assert resumed.clips(SOURCE.uri)["caption"].tolist() == ["old"]
    resumed.record(SOURCE, ROW, _clips("newer"))  # the rerun writes over the leftover temp file
    assert read_table(results)["caption"].tolist() == ["newer"]
    assert not temp_path(results).exists()


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = atomic_write_bytes(tmp_path / "index.json", b"old")

    def fail_half_way(tmp):
        tmp.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail_half_way)
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]
    atomic_write_bytes(tmp_path / "new" / "file.bin", b"x")  # creates the folder
    assert (tmp_path / "new" / "file.bin").read_bytes() == b"x"
