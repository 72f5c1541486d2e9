"""Resume: SIGKILL a real `svp curate` run (its own local Ray, in its own process group) after its first
sources finished, run the same command again, and get byte-identical shards to an uninterrupted run, with
no finished source redone, no clip lost and none duplicated."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from process_groups import pids_in_group
from waiting import wait_until

from curation.resume import MANIFEST, RESULTS, WORK_DIR
from curation.synth import VIDEOS_DIR, make_corpus
from curation.thumbs import THUMBS_DIR
from orchestration.cli import main


def _digests(folder: Path, pattern: str = "*.tar") -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob(pattern))}


def _members(folder: Path) -> list[tuple[str, str, bytes]]:
    """(tar, member, content) of every member, with mp4 content replaced by nothing."""
    out = []
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                data = b"" if m.name.endswith(".mp4") else tar.extractfile(m).read()
                out.append((path.name, m.name, data))
    return out


def _manifest_lines(out: Path) -> list[dict]:
    path = out / WORK_DIR / MANIFEST
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut by the kill
            lines.append(json.loads(line))
    return lines


def _kill_after_first_sources(cmd: list[str], out: Path, ray_tmp: str) -> tuple[int, int]:
    """Run `cmd` in its own process group with its own Ray; SIGKILL the whole group as soon as the
    manifest shows a finished source. Returns (finished sources at the kill, leftover processes)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp  # its own Ray session folder: nothing shared with the test session's Ray
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    pgid = proc.pid  # start_new_session: the child leads its own group; Ray's processes inherit it
    try:
        wait_until(lambda: proc.poll() is not None or _manifest_lines(out), 240, "finished source", 0.02)
        assert proc.poll() is None, (
            "the run finished before it could be killed:\n" + proc.stdout.read().decode()[-3000:]
        )
        assert _manifest_lines(out), "no source finished within the time limit"
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=30)
        finished = len(_manifest_lines(out))
        # Ray's daemons are in the group too and die with it; give the kernel a moment to reap them.
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not pids_in_group(pgid), 5, "end of the killed group")
        return finished, len(pids_in_group(pgid))
    finally:
        for pid in pids_in_group(pgid):  # never leave anything of ours running, even on failure
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.stdout.close()


def _write_one_at_a_time_config(config: Path) -> Path:
    # One decode task at a time and scorer batches of one clip, so finished sources reach the manifest one by
    # one and the kill lands while sources are still pending; small shards, so there are several of them.
    config.write_text(
        yaml.safe_dump(
            {
                "scenes": {"min_clip_s": 1.0},
                "ray": {"decode_concurrency": 1, "scorer_batch_size": 1},
                "shards": {"short_side": 96, "target_shard_mb": 0.05},
            }
        )
    )
    return config


def _check_same_output(reference: Path, resumed: Path) -> None:
    # Same shards, byte for byte; same clips, none lost and none duplicated.
    assert len(_digests(reference / "shards")) > 1
    # First everything but the encoded video (names, order, rows, captions), then the whole tars: when only
    # the second fails, the H.264 encoder is what differs between the runs, not the curation.
    assert _members(resumed / "shards") == _members(reference / "shards")
    assert _digests(resumed / "shards") == _digests(reference / "shards"), (
        "mp4 bytes differ: encoder not deterministic"
    )
    ref_clips = pd.read_parquet(reference / "clips.parquet")
    new_clips = pd.read_parquet(resumed / "clips.parquet")
    assert new_clips["clip_id"].is_unique
    pd.testing.assert_frame_equal(new_clips, ref_clips)
    # Thumbnails too: one per clip, byte-identical, whether its source finished before or after the kill.
    assert _digests(resumed / THUMBS_DIR, "*.jpg") == _digests(reference / THUMBS_DIR, "*.jpg")
    assert sorted(p.stem for p in (resumed / THUMBS_DIR).glob("*.jpg")) == sorted(ref_clips["clip_id"])
    pd.testing.assert_frame_equal(
        pd.read_parquet(resumed / "sources.parquet"), pd.read_parquet(reference / "sources.parquet")
    )


@pytest.mark.slow
def test_killed_run_resumes_to_identical_shards(ray_session, tmp_path):
    truth = make_corpus(tmp_path, 6, seed=9)
    videos = tmp_path / VIDEOS_DIR
    total = len(truth.videos) + len(truth.broken)
    config = _write_one_at_a_time_config(tmp_path / "curate.yaml")

    def command(out: Path) -> list[str]:
        return ["curate", "--input", str(videos), "--output", str(out), "--config", str(config)]

    reference = tmp_path / "reference"
    assert main(command(reference)) == 0

    resumed = tmp_path / "resumed"
    ray_tmp = tempfile.mkdtemp(prefix="svpr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    try:
        finished, leftover = _kill_after_first_sources(
            [sys.executable, "-m", "orchestration.cli", *command(resumed)], resumed, ray_tmp
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert leftover == 0, "processes of the killed run survived the group kill"
    assert 1 <= finished < total, f"kill landed after {finished} of {total} sources"
    assert not (resumed / "report.json").exists()
    done_before = {e["uri"] for e in _manifest_lines(resumed)}
    results = resumed / WORK_DIR / RESULTS
    stamps = {p.name: p.stat().st_mtime_ns for p in results.glob("*.parquet")}

    assert main(command(resumed)) == 0

    # Finished sources were not redone: their results were not rewritten, their manifest lines not repeated.
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.parquet") if p.name in stamps} == stamps
    uris = [e["uri"] for e in _manifest_lines(resumed)]
    assert len(uris) == len(set(uris)) == total and done_before <= set(uris)
    _check_same_output(reference, resumed)


def test_manifest_survives_a_cut_line_and_rejects_stale_entries(tmp_path):
    from curation.resume import ResumeState
    from curation.sources import SourceEntry
    from curation.tables import source_row

    a = SourceEntry(uri="/v/a.mp4", bytes=10, mtime="1")
    b = SourceEntry(uri="/v/b.mp4", bytes=20, mtime="2")
    state = ResumeState(tmp_path, "cfg1")
    clips = pd.DataFrame({"clip_id": ["x_0000000_0000010"], "source_id": ["x"], "motion_score": [1.5]})
    state.record(a, source_row(uri=a.uri, bytes=10, status="ok", num_clips=1, source_id="x"), clips)
    state.record(b, source_row(uri=b.uri, bytes=20, status="rejected", reason="empty file (0 bytes)"), None)
    with open(tmp_path / WORK_DIR / MANIFEST, "a") as f:
        f.write('{"uri": "/v/c.mp4", "by')  # a line cut by a kill

    again = ResumeState(tmp_path, "cfg1")
    assert again.is_done(a) and again.is_done(b)
    assert again.clips(a.uri)["motion_score"].tolist() == [1.5]
    assert not again.is_done(SourceEntry(uri=a.uri, bytes=11, mtime="1"))  # the file changed
    again.results_path(a.uri).unlink()
    assert not again.is_done(a)  # its clips are gone: redo it
    assert not ResumeState(tmp_path, "cfg2").is_done(b)  # another scoring configuration starts over


_ENCODE_SNIPPET = """
import hashlib, sys
import cv2
from curation.synth import render_shot
from model.video_io import encode_mp4
shots = render_shot(1, 96, 160, 30, 2, 0.4) + render_shot(11, 96, 160, 30, 0, 0.9)  # a pan, a cut, a still
frames = [cv2.resize(f, (426, 256)) for f in shots]
print(hashlib.sha256(encode_mp4(frames, 16.0)).hexdigest())
"""


def test_shard_encoder_does_not_depend_on_leftover_memory():
    """Byte-identical reruns need an encoder whose output depends only on its input. glibc fills fresh heap
    memory with a different byte under each MALLOC_PERTURB_: equal digests mean no uninitialised memory
    reaches the bitstream (x264's mb-tree lookahead reads some; `x264-params: mbtree=0` avoids it)."""
    digests = set()
    for perturb in ("1", "77", "200"):
        env = {**os.environ, "MALLOC_PERTURB_": perturb}
        out = subprocess.run(
            [sys.executable, "-c", _ENCODE_SNIPPET],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1, "model.video_io.encode_mp4 output depends on uninitialised memory"
