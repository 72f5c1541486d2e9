"""Shard writer: real mp4 sources cut and transcoded, deterministic tars read back with webdataset."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from pydantic import ValidationError

from curation.format import INDEX_COLUMNS, bucket_for, make_clip_id
from curation.shard_tar import write_tar
from curation.shards import MANIFEST_FILE, ShardConfig, caption_text, read_shard_config, write_shards
from curation.transcode import output_size, output_times
from model.video_io import read_frames, write_mp4

SOURCE_A = "a" * 32
SOURCE_B = "b" * 32


def _gray_video(path: Path, n: int, fps: float, h: int, w: int) -> Path:
    """Frame i is a flat gray of value 3*i (+ a moving bar), so a decoded frame tells which source frame it is."""
    frames = np.zeros((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        frames[i] = 3 * i
        frames[i, :, (4 * i) % w, 1] = 255
    return write_mp4(frames, path, fps)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sources")
    return {
        SOURCE_A: _gray_video(folder / "a.mp4", 72, 24.0, 48, 64),
        SOURCE_B: _gray_video(folder / "b.mp4", 60, 30.0, 80, 48),
    }


def _clips(sources: dict[str, Path]) -> pd.DataFrame:
    spans = {SOURCE_A: [(0, 24), (30, 66)], SOURCE_B: [(0, 30), (30, 60)]}
    rows = []
    for sid, pairs in spans.items():
        fps = 24.0 if sid == SOURCE_A else 30.0
        w, h = (64, 48) if sid == SOURCE_A else (48, 80)
        for k, (a, b) in enumerate(pairs):
            rows.append(
                {
                    "clip_id": make_clip_id(sid, a, b),
                    "source_id": sid,
                    "uri": str(sources[sid]),
                    "start_frame": a,
                    "end_frame": b,
                    "start_s": a / fps,
                    "end_s": b / fps,
                    "fps": fps,
                    "width": w,
                    "height": h,
                    "motion_score": 4.6 + k,
                    "aesthetic_score": np.nan if k else 5.25,
                    "caption": f"clip {k} of source {sid[0]}: a flat gray card",
                    "caption_issues": np.array([], dtype=object),
                }
            )
    return pd.DataFrame(rows)


CFG = ShardConfig(fps=12, short_side=32, target_shard_mb=0.008, prefix="test")


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every shard, and of every member, so that a mismatch says which sample differs."""
    out = {}
    for path in sorted(folder.glob("*.tar")):
        out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        with tarfile.open(path) as tar:
            for m in tar:
                out[f"{path.name}/{m.name}"] = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
    return out


def test_shards_read_back_with_webdataset_and_every_mp4_decodes(sources, tmp_path):
    clips = _clips(sources)
    index = write_shards(tmp_path, clips, CFG)
    shards = tmp_path / "shards"
    assert tuple(index.columns) == INDEX_COLUMNS
    assert tuple(pq.read_table(shards / "index.parquet").column_names) == INDEX_COLUMNS
    assert len(list(shards.glob("*.tar"))) >= 2  # the small target size splits the clips over several shards
    assert list(index["key"]) == sorted(clips["clip_id"])  # clip_id order
    urls = [str(p) for p in sorted(shards.glob("test-*.tar"))]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        seen[sample["__key__"]] = sample
    assert sorted(seen) == sorted(clips["clip_id"])
    for row in clips.to_dict("records"):
        sample = seen[row["clip_id"]]
        frames = read_frames(sample["mp4"])
        expected = len(output_times(row["start_s"], row["end_s"], CFG.fps, CFG.max_frames))
        w, h = output_size(row["width"], row["height"], CFG.short_side)
        assert frames.shape == (expected, h, w, 3)
        entry = index.set_index("key").loc[row["clip_id"]]
        assert (entry.num_frames, entry.height, entry.width, entry.fps) == (expected, h, w, CFG.fps)
        assert entry.bucket == bucket_for(h, w, expected).name
        assert entry.duration_s == pytest.approx(expected / CFG.fps)
        meta = json.loads(sample["json"])
        assert meta["clip_id"] == row["clip_id"] and meta["caption"] == row["caption"]
        assert meta["aesthetic_score"] == (
            None if np.isnan(row["aesthetic_score"]) else row["aesthetic_score"]
        )
        assert meta["shard_video"] == {"num_frames": expected, "height": h, "width": w, "fps": CFG.fps}
        assert sample["txt"].decode() == f"{row['caption']} motion score: {round(row['motion_score'])}."
        assert _members_at(shards / entry.shard, entry.offset, entry.length) == {
            f"{row['clip_id']}.{ext}": sample[ext] for ext in ("json", "mp4", "txt")
        }


def _members_at(tar_path: Path, offset: int, size: int) -> dict[str, bytes]:
    """Parse bytes [offset, offset + size) of a tar on their own, as a ranged read would fetch them."""
    with open(tar_path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    assert len(data) == size
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def _assert_spans_tile_each_shard(shards: Path, index: pd.DataFrame) -> None:
    """Samples follow each other with no gap, from byte 0 to the tar's end-of-archive blocks."""
    for name, rows in index.groupby("shard", sort=True):
        ends = [0, *(rows["offset"] + rows["length"]).tolist()]
        assert rows["offset"].tolist() == ends[:-1]
        with open(shards / name, "rb") as f:
            f.seek(ends[-1])
            assert f.read(1024) == bytes(1024)


def test_offsets_survive_a_resumed_run_that_rewrites_only_some_shards(sources, tmp_path):
    clips = _clips(sources)
    first = write_shards(tmp_path, clips, CFG)
    _assert_spans_tile_each_shard(tmp_path / "shards", first)
    # Dropping the last clip rewrites only the last shard: the others keep their bytes and their offsets,
    # which the index now takes from the layout, not from a write.
    shards = tmp_path / "shards"
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")}
    index = write_shards(tmp_path, clips.iloc[:-1], CFG)
    kept = [n for n, t in mtimes.items() if (shards / n).is_file() and (shards / n).stat().st_mtime_ns == t]
    assert kept
    assert index.equals(write_shards(tmp_path / "fresh", clips.iloc[:-1], CFG))
    _assert_spans_tile_each_shard(shards, index)
    for row in index.itertuples():
        assert set(_members_at(shards / row.shard, row.offset, row.length)) == {
            f"{row.key}.{ext}" for ext in ("json", "mp4", "txt")
        }


def test_long_keys_get_pax_headers_and_their_offsets_still_hold(tmp_path):
    long_key, short_key = "k" * 128, "short"  # a 132-character member name needs a PAX header
    samples = [
        (short_key, [("json", b"{}"), ("txt", b"x" * 700)]),
        (long_key, [("mp4", b"\x01" * 513), ("txt", b"")]),
        (short_key + "2", [("txt", b"y")]),
    ]
    spans = write_tar(tmp_path / "t.tar", samples)
    assert spans[1][1] > 3 * 512  # the PAX header blocks are counted
    for (key, members), (offset, size) in zip(samples, spans, strict=True):
        assert _members_at(tmp_path / "t.tar", offset, size) == {
            f"{key}.{ext}": data for ext, data in members
        }


def test_frames_are_resampled_by_timestamp(sources, tmp_path):
    """24 fps → 12 fps: output frame j shows source frame start + 2j; 30 fps → 12 fps: start + floor(2.5j)."""
    clips = _clips(sources)
    write_shards(tmp_path, clips, CFG)
    samples = {
        s["__key__"]: s
        for s in wds.WebDataset(sorted(map(str, (tmp_path / "shards").glob("*.tar"))), shardshuffle=False)
    }
    for row in clips.to_dict("records"):
        frames = read_frames(samples[row["clip_id"]]["mp4"]).astype(int)
        ratio = row["fps"] / CFG.fps
        # Read the gray level away from the moving bar: the red channel carries only the flat value.
        levels = frames[:, :, :, 0].mean(axis=(1, 2))
        expected = [3 * (row["start_frame"] + int(np.floor(j * ratio + 1e-9))) for j in range(len(frames))]
        np.testing.assert_allclose(levels, expected, atol=4)


def test_two_runs_are_byte_identical_and_a_rerun_skips_finished_shards(sources, tmp_path):
    clips = _clips(sources)
    write_shards(tmp_path / "one", clips, CFG)
    write_shards(tmp_path / "two", clips.sample(frac=1.0, random_state=0), CFG)  # row order does not matter
    one, two = _digests(tmp_path / "one" / "shards"), _digests(tmp_path / "two" / "shards")
    assert one == two and one
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "one" / "shards").glob("*.tar")}
    write_shards(tmp_path / "one", clips, CFG)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "one" / "shards").glob("*.tar")} == mtimes


def test_leftovers_of_a_killed_run_and_stale_shards_are_removed(sources, tmp_path):
    clips = _clips(sources)
    reference = _digests(_fresh(tmp_path / "ref", clips, CFG))
    shards = tmp_path / "out" / "shards"
    shards.mkdir(parents=True)
    # What a kill leaves: a half-written tar under its temp name, a half-written cached clip, a shard of an
    # older, larger plan, and a complete-looking shard the manifest knows nothing about.
    (shards / ".test-000000.tar.tmp").write_bytes(b"partial")
    (shards / ".transcoded").mkdir()
    (shards / ".transcoded" / f".{clips.clip_id[0]}.mp4.tmp").write_bytes(b"partial")
    (shards / "test-000042.tar").write_bytes(b"stale")
    (shards / "test-000000.tar").write_bytes(b"not what the plan says")
    write_shards(tmp_path / "out", clips, CFG)
    assert not list(shards.glob(".*.tmp")) and not list((shards / ".transcoded").glob(".*.tmp"))
    assert _digests(shards) == reference


def test_a_smaller_selection_rewrites_shards_and_keeps_dropped_transcodes_until_pruned(sources, tmp_path):
    from curation.refilter import prune_transcodes

    clips = _clips(sources)
    write_shards(tmp_path, clips, CFG)
    fewer = clips.iloc[1:]
    index = write_shards(tmp_path, fewer, CFG)
    assert sorted(index["key"]) == sorted(fewer["clip_id"])
    cached = {p.stem for p in (tmp_path / "shards" / ".transcoded").glob("*.mp4")}
    assert cached == set(clips["clip_id"])  # the dropped clip keeps its transcode for re-filtering
    assert _digests(tmp_path / "shards") == _digests(_fresh(tmp_path / "fresh", fewer, CFG))
    assert prune_transcodes(tmp_path)[0] == 1
    cached = {p.stem for p in (tmp_path / "shards" / ".transcoded").glob("*.mp4")}
    assert cached == set(fewer["clip_id"])
    assert _digests(tmp_path / "shards") == _digests(tmp_path / "fresh" / "shards")


def test_without_kept_transcodes_a_rewrite_transcodes_again_to_the_same_bytes(sources, tmp_path):
    cfg = CFG.model_copy(update={"keep_transcoded": False})
    clips = _clips(sources)
    write_shards(tmp_path, clips, cfg)
    assert not list((tmp_path / "shards" / ".transcoded").glob("*.mp4"))
    write_shards(tmp_path, clips.iloc[:-1], cfg)  # shifts no boundary before the end: some shards rewritten
    assert _digests(tmp_path / "shards") == _digests(_fresh(tmp_path / "fresh", clips.iloc[:-1], CFG))
    assert read_shard_config(tmp_path) == cfg


def test_ray_tasks_give_the_same_bytes_as_a_serial_run(sources, tmp_path, ray_session):
    clips = _clips(sources)
    cfg = CFG.model_copy(update={"clips_per_task": 1})
    assert ray_session.is_initialized()
    on_ray = _digests(_fresh(tmp_path / "ray", clips, cfg))
    assert on_ray == _digests(_fresh(tmp_path / "serial", clips, cfg, use_ray=False))


def _fresh(out: Path, clips: pd.DataFrame, cfg: ShardConfig, use_ray: bool | None = None) -> Path:
    write_shards(out, clips, cfg, use_ray=use_ray)
    return out / "shards"


def test_config_validation_and_caption_text():
    with pytest.raises(ValidationError, match="even"):
        ShardConfig(short_side=255)
    with pytest.raises(ValidationError, match="invalid sample key"):
        ShardConfig(prefix="../x")
    with pytest.raises(ValidationError, match="extra"):
        ShardConfig(fpss=3)
    assert caption_text({"caption": " a dog ", "motion_score": 7.6}, True) == "a dog motion score: 8."
    assert caption_text({"caption": "a dog", "motion_score": float("nan")}, True) == "a dog"
    assert caption_text({"caption": "a dog", "motion_score": 7.6}, False) == "a dog"
    assert caption_text({"caption": None, "motion_score": 2.0}, True) == "motion score: 2."


def test_missing_columns_and_unsafe_keys_are_clear_errors(sources, tmp_path):
    clips = _clips(sources)
    with pytest.raises(ValueError, match="lack columns: uri"):
        write_shards(tmp_path, clips.drop(columns=["uri"]), CFG)
    bad = clips.copy()
    bad.loc[0, "clip_id"] = "../../etc/passwd"
    with pytest.raises(ValueError, match="invalid sample key"):
        write_shards(tmp_path, bad, CFG)
    assert not (tmp_path / "shards" / MANIFEST_FILE).exists()


def _rotated_vfr_mp4(path: Path) -> tuple[Path, list[float]]:
    """Coded 64×32, displayed turned 90° counter-clockwise; alternating 55/30 ms frame durations. The coded
    left half carries the frame index (100 + 3i), the right half is black. Written with PyAV directly
    because model.video_io writes constant-rate, unrotated files only."""
    import io
    from fractions import Fraction

    import av

    times, t = [], 0
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        s.set_display_rotation(90)
        for i in range(40):
            img = np.zeros((32, 64, 3), np.uint8)
            img[:, :32] = 100 + 3 * i
            f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            f.pts, f.time_base = t, Fraction(1, 1000)
            times.append(t / 1000)
            t += 55 if i % 2 == 0 else 30
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    path.write_bytes(buf.getvalue())
    return path, times


def test_rotation_is_applied_and_variable_frame_rate_is_resampled_by_timestamp(tmp_path):
    path, times = _rotated_vfr_mp4(tmp_path / "rot.mp4")
    sid = "c" * 32
    clip = {
        "clip_id": make_clip_id(sid, 4, 36),
        "source_id": sid,
        "uri": str(path),
        "start_s": times[4],
        "end_s": times[36],
        "width": 32,  # display size
        "height": 64,
        "caption": "a rotated clip",
    }
    cfg = CFG.model_copy(update={"fps": 10.0})
    index = write_shards(tmp_path / "out", pd.DataFrame([clip]), cfg)
    (sample,) = wds.WebDataset(str(tmp_path / "out" / "shards" / "test-000000.tar"), shardshuffle=False)
    frames = read_frames(sample["mp4"]).astype(int)
    assert frames.shape[1:3] == (64, 32)  # portrait, as displayed
    assert (index.height[0], index.width[0]) == (64, 32)
    top, bottom = frames[:, :28].mean(axis=(1, 2, 3)), frames[:, 36:].mean(axis=(1, 2, 3))
    assert (bottom - top > 60).all()  # the coded left half ends up at the bottom after a CCW quarter turn
    targets = output_times(clip["start_s"], clip["end_s"], cfg.fps, cfg.max_frames)
    shown = [max(i for i, t in enumerate(times) if t <= target + 1e-6) for target in targets]
    np.testing.assert_allclose(frames[:, 40:, :, 0].mean(axis=(1, 2)), [100 + 3 * i for i in shown], atol=5)


def test_a_clip_that_cannot_be_transcoded_is_recorded_and_the_shards_are_written_without_it(
    sources, tmp_path, ray_session
):
    """A kept clip whose source turned to garbage after scoring: recorded against the clip, counted in the
    report, left out of byte-identical shards, on Ray and serially, and the same again on a rerun."""
    from curation.report import build_report
    from curation.shards import mark_transcode_failures, transcode_failures
    from curation.thresholds import apply_thresholds, default_thresholds

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(sources[SOURCE_A].read_bytes()[:64] + b"\0garbage" * 100)
    good = _clips(sources)
    bad = good.iloc[[0]].assign(clip_id=make_clip_id("c" * 32, 0, 24), source_id="c" * 32, uri=str(broken))
    clips = pd.concat([good, bad], ignore_index=True)
    cfg = CFG.model_copy(update={"clips_per_task": 1})
    expected = _digests(_fresh(tmp_path / "good", good, cfg, use_ray=False))
    for run in range(2):  # the rerun meets the same broken clip and does the same
        index = write_shards(tmp_path / "out", clips, cfg, use_ray=True)
        assert _digests(tmp_path / "out" / "shards") == expected, run
        assert sorted(index["key"]) == sorted(good["clip_id"])
        failures = transcode_failures(tmp_path / "out")
        assert list(failures) == [bad["clip_id"].iloc[0]]
        assert failures[bad["clip_id"].iloc[0]].startswith("transcode failed: ")
    assert _digests(_fresh(tmp_path / "serial", clips, cfg, use_ray=False)) == expected

    thresholds = default_thresholds()
    judged = mark_transcode_failures(apply_thresholds(clips, thresholds), failures)
    row = judged[judged["clip_id"] == bad["clip_id"].iloc[0]].iloc[0]
    assert (
        not row["kept"]
        and "transcode" in row["filtered_by"]
        and row["transcode_error"].startswith("transcode")
    )
    report = build_report(pd.DataFrame({"status": ["ok"] * 3, "reason": [""] * 3}), judged, thresholds)
    assert report["clips"]["transcode_failed"] == 1
    assert report["clips"]["transcode_failures"][0]["clip_id"] == bad["clip_id"].iloc[0]


def test_when_no_kept_clip_can_be_transcoded_it_stops_and_keeps_the_shards(sources, tmp_path):
    """Every source gone (unmounted storage) is not a bad clip: it raises and leaves the last shards alone."""
    clips = _clips(sources)
    shards = _fresh(tmp_path, clips, CFG.model_copy(update={"keep_transcoded": False}), use_ray=False)
    before = _digests(shards)
    gone = clips.assign(uri=str(tmp_path / "gone.mp4"), end_s=clips["end_s"] + 0.5)
    with pytest.raises(RuntimeError, match="none of the 4 kept clips could be transcoded"):
        write_shards(tmp_path, gone, CFG, use_ray=False)
    assert _digests(shards) == before
