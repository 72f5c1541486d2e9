"""The stage loader on real shards: shapes and buckets, rank/worker split, exact resume, bad samples."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from shard_fixtures import broken_keys, make_shards

from model.video_io import encode_mp4
from training.config import load_preset
from training.data.buckets import DataPosition
from training.data.stage_data import StageData
from training.data.video_clips import decode_at, resize_crop, window_times


def video_stage(data, **changes):
    stage = load_preset("tiny", variables={"data_root": str(data)}).stage("video")
    return stage.replace(**changes)


def take(data: StageData, n: int, position=None):
    stream = data.batches(position)
    return [next(stream) for _ in range(n)]


def same_batches(a, b) -> None:
    assert [x.keys for x in a] == [y.keys for y in b]
    assert [x.position for x in a] == [y.position for y in b]
    for x, y in zip(a, b, strict=True):
        assert x.bucket == y.bucket and x.captions == y.captions
        assert torch.equal(x.video, y.video)


# ---- decoding ------------------------------------------------------------------------------------------


def numbered_video(frames: int, step: int, size: int = 32) -> bytes:
    """Frame i is a flat grey of value step·i, so a decoded frame tells which source frame it was."""
    video = np.stack([np.full((size, size, 3), step * i, dtype=np.uint8) for i in range(frames)])
    return encode_mp4(video, fps=12, crf=10, gop=12)


def frame_ids(frames: np.ndarray, step: int) -> list[int]:
    return [round(float(f.mean()) / step) for f in frames]


def test_resample_by_timestamps_and_seek():
    short = numbered_video(24, 10)
    # 12 fps source taken at 6 fps: every second frame, starting at the chosen time.
    assert frame_ids(decode_at(short, 0.5 + np.arange(5) / 6), 10) == [6, 8, 10, 12, 14]
    # Upsampling to 24 fps repeats the nearest frame.
    assert frame_ids(decode_at(short, np.array([0.0, 0.03, 0.09, 0.11])), 10) == [0, 0, 1, 1]
    # Deep into a longer clip: decoding starts at a key frame near the window, not at the start.
    long = numbered_video(120, 2)
    assert frame_ids(decode_at(long, 7.0 + np.arange(3) / 12), 2) == [84, 85, 86]


def test_window_is_deterministic_and_inside_the_clip():
    times = [window_times(24, 12.0, 9, 8.0, np.random.default_rng([1, 0, 5])) for _ in range(2)]
    assert np.array_equal(times[0], times[1])
    assert times[0][0] >= 0 and times[0][-1] <= 23 / 12 + 1e-9
    assert np.allclose(np.diff(times[0]), 1 / 8)


def test_resize_covers_then_centre_crops():
    frames = np.zeros((2, 48, 80, 3), dtype=np.uint8)
    frames[:, :, :8] = 255  # a white band at the left edge is cropped away for a square bucket
    out = resize_crop(frames, 32, 32)
    assert out.shape == (3, 2, 32, 32) and out.dtype == torch.float32
    assert float(out.max()) == -1.0 and float(out.min()) == -1.0


# ---- batches -------------------------------------------------------------------------------------------


def test_batches_have_one_shape_per_bucket(tmp_path):
    data = make_shards(tmp_path / "d", 12, sizes=[(64, 64), (48, 80)], frames=[24, 36], clips_per_shard=5)
    buckets = [
        {"height": 32, "width": 32, "num_frames": 9, "batch_size": 2},
        {"height": 32, "width": 56, "num_frames": 9, "batch_size": 3},
        {"height": 32, "width": 32, "num_frames": 17, "batch_size": 1},
    ]
    stage = StageData(video_stage(data, buckets=buckets))
    index = {row["key"]: row for _, row in pd.read_parquet(data / "shards" / "index.parquet").iterrows()}

    def expected(row) -> str:
        # 36 frames at 12 fps (2.9 s) fill 17 frames at 8 fps (2 s); 24 frames (1.9 s) do not.
        wide = row["width"] > row["height"]
        return "32x56_t9" if wide else ("32x32_t17" if row["num_frames"] >= 36 else "32x32_t9")

    seen = set()
    for batch in take(stage, stage.batches_per_epoch()):
        h, w, t = (int(v) for v in batch.bucket.replace("_t", "x").split("x"))
        size = {"32x32_t9": 2, "32x56_t9": 3, "32x32_t17": 1}[batch.bucket]
        assert batch.video.shape == (size, 3, t, h, w) and batch.video.dtype == torch.float32
        assert float(batch.video.min()) >= -1.0 and float(batch.video.max()) <= 1.0
        assert len(batch.captions) == size and all(c.startswith("a ") for c in batch.captions)
        assert {expected(index[k]) for k in batch.keys} == {batch.bucket}
        seen |= set(batch.keys)
    assert seen == set(index)  # one epoch on one rank covers every sample

    image = load_preset("tiny", variables={"data_root": str(data)}).stage("image")
    batch = take(StageData(image), 1)[0]
    assert batch.video.shape == (4, 3, 1, 32, 32) and batch.bucket == "32x32_t1"


def test_two_ranks_split_one_shard_and_never_run_dry(tmp_path):
    data = make_shards(tmp_path / "d", 8, clips_per_shard=100)  # one shard, fewer than ranks × workers
    assert len(list((data / "shards").glob("*.tar"))) == 1
    stage = video_stage(data)  # batch 2 → 4 global batches per epoch → 2 per rank
    ranks = [take(StageData(stage, rank, 2), 10) for rank in range(2)]
    first_epoch = [{k for b in batches[:2] for k in b.keys} for batches in ranks]
    assert first_epoch[0].isdisjoint(first_epoch[1])
    assert len(first_epoch[0] | first_epoch[1]) == 8
    # Both ranks keep yielding, step for step, with the same (rank-independent) positions.
    assert [b.position for b in ranks[0]] == [b.position for b in ranks[1]]
    assert [b.position.step for b in ranks[0]] == list(range(1, 11))
    # An epoch that does not divide among the ranks wraps around instead of starving one.
    odd = video_stage(make_shards(tmp_path / "odd", 6, clips_per_shard=100))  # 3 batches, 2 ranks
    counts = [len(take(StageData(odd, rank, 2), 5)) for rank in range(2)]
    assert counts == [5, 5]


def test_worker_processes_give_the_same_stream(tmp_path):
    data = make_shards(tmp_path / "d", 8, clips_per_shard=3)
    stage = video_stage(data)
    in_process = take(StageData(stage, 1, 2), 5)
    with_workers = take(StageData(stage.replace(num_workers=2), 1, 2), 5)
    same_batches(in_process, with_workers)


def test_resume_from_batch_k_gives_k_plus_one_onwards(tmp_path):
    data = make_shards(tmp_path / "d", 10, sizes=[(64, 64), (48, 80)], clips_per_shard=3)
    stage = video_stage(data)
    for world_size, workers in ((2, 0), (1, 2)):
        config = stage.replace(num_workers=workers)
        full = take(StageData(config, 0, world_size), 9)
        for k in (1, 4):  # mid-epoch and across an epoch boundary
            saved = json.loads(json.dumps(full[k].position.to_dict()))
            resumed = take(StageData(config, 0, world_size), 9 - k - 1, DataPosition.from_dict(saved))
            same_batches(resumed, full[k + 1 :])


def test_resume_on_another_world_size_continues_the_global_order(tmp_path):
    data = make_shards(tmp_path / "d", 8, clips_per_shard=3)
    stage = video_stage(data)
    global_order = take(StageData(stage, 0, 1), 4)  # one rank sees the global order itself
    two = [take(StageData(stage, rank, 2), 2) for rank in range(2)]
    assert [b.keys for b in global_order] == [two[0][0].keys, two[1][0].keys, two[0][1].keys, two[1][1].keys]
    # After one step on 2 ranks (2 global batches done), 1 rank continues at global batch 2.
    resumed = take(StageData(stage, 0, 1), 2, two[0][0].position)
    assert [b.keys for b in resumed] == [b.keys for b in global_order[2:4]]
    assert resumed[0].position.step == 2 and resumed[0].position.world_size == 1


def test_bad_samples_are_skipped_and_counted(tmp_path):
    data = make_shards(tmp_path / "d", 8, bad_video=1, no_caption=1, clips_per_shard=3)
    bad = broken_keys(data)
    assert sorted(bad.values()) == ["missing_caption", "undecodable_video"]
    loader = StageData(video_stage(data))
    batches = take(loader, 2 * loader.batches_per_epoch())
    assert all(b.video.shape[0] == 2 for b in batches)  # replaced, batches stay full
    assert not {k for b in batches for k in b.keys} & set(bad)
    assert loader.stats.skipped == {"missing_caption": 1, "undecodable_video": 1}
    stats = loader.stats.to_dict()
    assert stats["samples_read"] == 2 * len(batches) and stats["batches"] == len(batches)
    assert stats["wait_seconds"] > 0 and stats["skipped_total"] == 2


def test_position_checks_and_data_errors(tmp_path):
    data = make_shards(tmp_path / "d", 4)
    loader = StageData(video_stage(data))
    position = take(loader, 1)[0].position
    assert DataPosition.from_dict(position.to_dict()) == position
    with pytest.raises(ValueError, match="unknown keys bogus"):
        DataPosition.from_dict({**position.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="epoch must be int"):
        DataPosition.from_dict({**position.to_dict(), "epoch": "1"})
    # A position at or past an epoch's end (saved on a world size that padded further) starts the next epoch.
    past_end = DataPosition(epoch=0, consumed=99, step=3, seed=position.seed, dataset=position.dataset)
    assert take(loader, 1, past_end)[0].position == DataPosition(
        epoch=1, consumed=1, step=4, world_size=1, seed=position.seed, dataset=position.dataset
    )
    other = make_shards(tmp_path / "other", 5)
    with pytest.raises(ValueError, match="the data changed since this position was saved"):
        next(StageData(video_stage(other)).batches(position))
    assert StageData(video_stage(other)).dataset_fingerprint() != loader.dataset_fingerprint()
    assert StageData(video_stage(data)).dataset_fingerprint() == loader.dataset_fingerprint()
    with pytest.raises(FileNotFoundError, match=r"stage 'video': data folder .*nowhere does not exist"):
        StageData(video_stage(tmp_path / "nowhere"))
    short = make_shards(tmp_path / "short", 2, frames=4)
    with pytest.raises(ValueError, match="none of the 2 samples .* fills a bucket"):
        StageData(video_stage(short))


def test_reads_the_curation_writer_output(tmp_path):
    """Shards written by curation's own writer (PAX tars, a curation output folder) load as they are."""
    from shard_fixtures import moving_square

    from curation.format import make_clip_id
    from curation.shards import ShardConfig, write_shards
    from model.video_io import write_mp4

    rows = []
    for i in range(4):
        source = write_mp4(
            moving_square(96, 128, 48, "red", "right", i), tmp_path / "src" / f"v{i}.mp4", fps=24
        )
        rows.append(
            {
                "clip_id": make_clip_id(f"source{i}", 0, 48),
                "uri": str(source),
                "start_s": 0.0,
                "end_s": 2.0,
                "caption": "a red square moves right",
            }
        )
    out = tmp_path / "curated"
    config = ShardConfig(fps=8, short_side=64, target_shard_mb=0.02)
    write_shards(out, pd.DataFrame(rows), config, use_ray=False)
    assert len(list((out / "shards").glob("*.tar"))) > 1
    stage = load_preset("tiny", variables={"data_root": str(out)}).stage("video-hires")
    loader = StageData(stage)
    batches = take(loader, loader.batches_per_epoch())
    assert {k for b in batches for k in b.keys} == {r["clip_id"] for r in rows}
    assert all(b.video.shape == (2, 3, 9, 64, 64) for b in batches)
    assert batches[0].captions[0].startswith("a red square moves right")
    assert loader.stats.skipped == {}


def test_reads_shards_through_fsspec(tmp_path):
    """An fsspec URI (here the in-memory filesystem) instead of a local folder."""
    import fsspec

    local = make_shards(tmp_path / "d", 6, clips_per_shard=3)
    memory = fsspec.filesystem("memory")
    for path in (local / "shards").iterdir():
        memory.pipe(f"/remote-data/shards/{path.name}", path.read_bytes())
    try:
        remote = StageData(video_stage("memory://remote-data"))
        assert all(uri.startswith("memory://remote-data/shards/") for uri in remote.shard_uris)
        same_batches(take(remote, 4), take(StageData(video_stage(local)), 4))
    finally:
        memory.rm("/remote-data", recursive=True)


def test_index_offsets_mean_one_ranged_read_per_sample_and_no_header_scan(tmp_path, monkeypatch):
    """On object storage every header read is a request: with offsets in the index the loader never opens a
    shard, it fetches each sample's `[offset, offset + length)` and nothing else."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    local = make_shards(tmp_path / "d", 6, clips_per_shard=3)
    index = pd.read_parquet(local / "shards" / "index.parquet")
    assert (index["offset"] >= 0).all() and (index["length"] > 0).all()
    memory = fsspec.filesystem("memory")
    for path in (local / "shards").iterdir():
        memory.pipe(f"/ranged-data/shards/{path.name}", path.read_bytes())
    opened, ranges = [], []
    real_open, real_cat = MemoryFileSystem._open, MemoryFileSystem.cat_file

    def open_and_record(self, path, *args, **kwargs):
        opened.append(self._strip_protocol(path))
        return real_open(self, path, *args, **kwargs)

    def cat_and_record(self, path, start=None, end=None, **kwargs):
        ranges.append((self._strip_protocol(path).rsplit("/", 1)[-1], start, end))
        return real_cat(self, path, start, end, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "_open", open_and_record)
    monkeypatch.setattr(MemoryFileSystem, "cat_file", cat_and_record)
    try:
        remote = StageData(video_stage("memory://ranged-data"))
        batches = take(remote, 3)
    finally:
        monkeypatch.undo()
        memory.rm("/ranged-data", recursive=True)
    assert not [p for p in opened if p.endswith(".tar")]
    spans = {(r.shard, r.offset, r.offset + r.length): r.key for r in index.itertuples()}
    assert ranges and all(r in spans for r in ranges)
    assert sorted(spans[r] for r in ranges) == sorted(k for b in batches for k in b.keys)
    same_batches(batches, take(StageData(video_stage(local)), 3))


def test_an_index_without_offsets_is_read_by_scanning_the_headers(tmp_path):
    """Indexes written before the offset columns existed still load, to the same batches."""
    from training.data.shard_reader import read_index

    data = make_shards(tmp_path / "d", 10, clips_per_shard=4, bad_video=1)
    new = StageData(video_stage(data))
    with_offsets = take(new, 4)
    assert not new._reader._members  # read by offset: no header table was built
    index_path = data / "shards" / "index.parquet"
    pd.read_parquet(index_path).drop(columns=["offset", "length"]).to_parquet(index_path, index=False)
    assert (read_index(str(data / "shards"))[["offset", "length"]] == -1).all().all()
    old = StageData(video_stage(data))
    same_batches(take(old, 4), with_offsets)
    assert old._reader._members  # the shards' headers were scanned


def _flaky_filesystem():
    """A real fsspec filesystem under the `flaky://` protocol: the local one, except that ranged reads fail
    with transient errors (`fail_first` times per range, or always for ranges in `always_fail`)."""
    from fsspec.implementations.local import LocalFileSystem

    class Flaky(LocalFileSystem):
        protocol = ("flaky",)
        fail_first = 0
        always_fail: set = set()
        attempts: dict = {}

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol(str(path).removeprefix("flaky://"))

        def cat_file(self, path, start=None, end=None, **kwargs):
            where = (self._strip_protocol(path), start, end)
            n = self.attempts[where] = self.attempts.get(where, 0) + 1
            if where in self.always_fail or n <= self.fail_first:
                raise ConnectionResetError(f"connection reset (attempt {n})")
            return super().cat_file(path, start, end, **kwargs)

    return Flaky


def test_transient_read_errors_are_retried_and_only_really_bad_samples_are_skipped(tmp_path):
    import fsspec

    flaky = _flaky_filesystem()
    fsspec.register_implementation("flaky", flaky, clobber=True)
    local = make_shards(tmp_path / "d", 6, clips_per_shard=3)
    expected = take(StageData(video_stage(local)), 4)

    flaky.fail_first = 2  # every ranged read fails twice, then works: nothing is lost
    remote = StageData(video_stage(f"flaky://{local}"))
    same_batches(take(remote, 4), expected)
    assert remote.stats.skipped == {} and min(flaky.attempts.values()) >= 3  # two failures, then read

    # One sample whose reads always fail is skipped and counted once; resume from a position is exact.
    index = pd.read_parquet(local / "shards" / "index.parquet")
    row = index[index["key"] == expected[0].keys[0]].iloc[0]
    flaky.attempts.clear()
    flaky.always_fail = {
        (str(local / "shards" / row["shard"]), int(row["offset"]), int(row["offset"] + row["length"]))
    }
    try:
        remote = StageData(video_stage(f"flaky://{local}"))
        batches = take(remote, 4)
        assert row["key"] not in {k for b in batches for k in b.keys}
        assert remote.stats.skipped == {"read_error": 1} and all(b.video.shape[0] == 2 for b in batches)
        resumed = take(StageData(video_stage(f"flaky://{local}")), 2, batches[1].position)
        same_batches(resumed, batches[2:])
    finally:
        flaky.always_fail, flaky.fail_first = set(), 0


@pytest.mark.slow
def test_data_counters_are_summed_over_ranks(ray_session, tmp_path):
    from mlflow.tracking import MlflowClient
    from training_runs import sqlite_tracker

    from training.driver.stage_run import run_stage

    # One undecodable clip, and the first shard cut in half: both ranks meet bad samples of both kinds.
    data = make_shards(tmp_path / "data", num_clips=8, bad_video=1, seed=3)
    first_shard = sorted((data / "shards").glob("*.tar"))[0]
    with first_shard.open("r+b") as f:
        f.truncate(first_shard.stat().st_size // 2)
    overrides = {"stages.image.steps": 4, "stages.image.checkpoint.every": 4, "stages.image.sample": None}
    pipeline = load_preset("tiny", variables={"data_root": str(data)}, overrides=overrides)
    stage = pipeline.stage("image")
    expected: dict[str, float] = {}
    for rank in (0, 1):  # what each rank reads in 4 steps, counted by the same loader outside Ray
        loader = StageData(stage, rank, 2, stage.seed)
        take(loader, 4)
        assert loader.stats.skipped.get("read_error") and loader.stats.skipped.get("undecodable_video")
        counts = {
            "samples_read": loader.stats.samples_read,
            **{f"skipped/{k}": v for k, v in loader.stats.skipped.items()},
        }
        for key, value in counts.items():
            expected[f"data/{key}"] = expected.get(f"data/{key}", 0) + value
    expected["data/skipped_total"] = sum(v for k, v in expected.items() if k.startswith("data/skipped/"))

    tracker = sqlite_tracker(pipeline, tmp_path / "work")
    result = run_stage(pipeline, "image", workers=2, work_dir=tmp_path / "work", tracker=tracker)

    logged = MlflowClient(tracker.tracking_uri).get_run(result.mlflow_run_id).data.metrics
    assert {key: logged[key] for key in expected} == expected


def test_index_wide_counter_is_taken_once_when_summing_ranks():
    from training.data.data_metrics import sum_ranks

    rank = {"data/samples_read": 4.0, "data/skipped/fits_no_bucket": 3.0, "data/skipped/read_error": 1.0}
    summed = sum_ranks([{**rank, "data/skipped_total": 4.0}, {**rank, "data/skipped_total": 4.0}])
    assert summed == {
        "data/samples_read": 8.0,
        "data/skipped/fits_no_bucket": 3.0,  # every rank counts it over the whole index
        "data/skipped/read_error": 2.0,
        "data/skipped_total": 5.0,
    }


def test_one_reader_serves_threads_reading_the_same_shard(tmp_path):
    """`svp encode` decodes a shard's samples on a thread pool through one ShardReader: concurrent reads of
    one open shard must each get their own sample's bytes (a shared seek then read does not), with offsets
    and by scanning the headers."""
    from concurrent.futures import ThreadPoolExecutor

    from training.data.shard_reader import ShardReader

    data = make_shards(tmp_path / "d", 8, clips_per_shard=8, frames=4)
    index = pd.read_parquet(data / "shards" / "index.parquet")
    shard = str(data / "shards" / index["shard"][0])
    single = ShardReader()
    spans = {r.key: (int(r.offset), int(r.length)) for r in index.itertuples()}
    expected = {key: single.read_sample(shard, key, span) for key, span in spans.items()}
    shared = ShardReader()

    def read(i: int) -> bool:
        key = list(spans)[i % len(spans)]
        span = spans[key] if i % 2 else None
        return shared.read_sample(shard, key, span) == expected[key]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, range(4000)))
