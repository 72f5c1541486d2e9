"""The curation job end to end on a real local Ray: every input accounted for, broken files rejected with
their reasons, a crashing worker retried then recorded as failed, clips and scores in parquet, shards that
read back with webdataset and decode, and a report with the thresholds hash."""

from __future__ import annotations

import json

import cv2
import pandas as pd
import pytest
import webdataset as wds
import yaml

from curation.config import CurationConfig
from curation.format import INDEX_COLUMNS, SHARDS_DIR, make_clip_id
from curation.pipeline import STAGE_WORK_FILE, run_curation
from curation.resume import WORK_DIR
from curation.synth import VIDEOS_DIR, make_corpus, write_phone_clip
from curation.thresholds import load_thresholds, thresholds_hash
from curation.thumbs import THUMB_COLUMN, THUMB_LONG_SIDE, THUMBS_DIR, thumb_path
from curation.worker import CRASH_ENV
from model.video_io import read_frames

MAX_RETRIES = 1


@pytest.fixture(scope="module")
def curated(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    truth = make_corpus(root, 3, seed=5)
    videos = root / VIDEOS_DIR
    # A per-source Python failure: a caption sidecar that is not JSON.
    (videos / "bad_sidecar.mp4").write_bytes((videos / truth.videos[0].file).read_bytes()[:-1] + b"\x00")
    (videos / "bad_sidecar.json").write_text("{not json")
    # The same content under a second name, and an upright-by-rotation, variable-frame-rate phone clip (its
    # portrait scorer frames share batches with the landscape ones).
    (videos / "zz_copy.mp4").write_bytes((videos / truth.videos[2].file).read_bytes())
    write_phone_clip(videos / "phone.mp4")
    # A worker that dies outright (like a decoder segfault) on every attempt.
    (videos / "crashme.mp4").write_bytes((videos / truth.videos[1].file).read_bytes() + b"\x00")
    cfg = CurationConfig.model_validate(
        {
            "scenes": {"min_clip_s": 1.0, "max_clip_s": 3.0},
            "motion": {"codec_mvs": True},
            "ray": {"max_retries": MAX_RETRIES, "runtime_env": {"env_vars": {CRASH_ENV: "*crashme*"}}},
        }
    )
    out = root / "out"
    before = ray_session.data.DataContext.get_current().max_errored_blocks
    report = run_curation(str(videos), out, cfg)
    # The job tolerates dropped blocks only while it runs; other Ray Data jobs of this process still fail.
    assert ray_session.data.DataContext.get_current().max_errored_blocks == before
    return root, truth, out, report


def test_every_input_is_accounted_for(curated):
    root, truth, out, report = curated
    sources = pd.read_parquet(out / "sources.parquet")
    names = {u.rsplit("/", 1)[1] for u in sources["uri"]}
    extra = {"bad_sidecar.mp4", "crashme.mp4", "zz_copy.mp4", "phone.mp4"}
    expected = {v.file for v in truth.videos} | set(truth.broken) | extra
    assert names == expected
    by_name = {
        u.rsplit("/", 1)[1]: row for u, row in zip(sources["uri"], sources.to_dict("records"), strict=True)
    }
    for name, words in truth.broken.items():
        assert by_name[name]["status"] == "rejected" and words in by_name[name]["reason"], by_name[name]
    bad = by_name["bad_sidecar.mp4"]
    assert bad["status"] == "failed" and "not valid JSON" in bad["reason"]
    crash = by_name["crashme.mp4"]
    assert crash["status"] == "failed"
    assert f"each of {MAX_RETRIES + 1} attempts" in crash["reason"]
    assert crash["source_id"]
    copy = by_name["zz_copy.mp4"]
    assert (
        copy["status"] == "rejected"
        and copy["reason"] == f"duplicate content of {root / VIDEOS_DIR / truth.videos[2].file}"
    )
    phone = by_name["phone.mp4"]
    assert (
        phone["status"] == "ok" and (phone["width"], phone["height"]) == (96, 160) and phone["num_clips"] >= 1
    )
    for video in truth.videos:
        row = by_name[video.file]
        assert row["status"] == "ok" and row["reason"] == ""
        assert (row["width"], row["height"], row["codec"]) == (video.width, video.height, "h264")
        assert row["num_clips"] >= 1
    assert report["sources"] == {**report["sources"], "total": len(expected), "failed": 2, "rejected": 7}


def test_clips_table_has_every_score_and_decision(curated):
    root, truth, out, report = curated
    sources = pd.read_parquet(out / "sources.parquet")
    clips = pd.read_parquet(out / "clips.parquet")
    ok = sources[sources["status"] == "ok"]
    assert len(clips) == ok["num_clips"].sum() == report["clips"]["total"]
    assert set(clips["source_id"]) == set(ok["source_id"])
    for col in ("motion_score", "aesthetic_score", "caption_score", "caption", "kept", "filtered_by"):
        assert col in clips.columns
    assert clips["aesthetic_score"].isna().all()  # no weights configured: skipped, never made up
    assert "aesthetic_score" in report["skipped_scorers"]
    assert clips["motion_score"].notna().all()
    assert clips["motion_mv_score"].notna().any() and clips["motion_mv_score"].dtype == "float64"
    for row in clips.to_dict("records"):
        assert row["clip_id"] == make_clip_id(row["source_id"], row["start_frame"], row["end_frame"])
        assert row["end_frame"] - row["start_frame"] <= 3 * 24
    captioned = clips[clips["caption"].notna()]
    assert set(captioned["caption"]) == {v.caption for v in truth.videos}
    assert (captioned["caption_source"] == "sidecar").all()
    # The phone clip has no caption: the default thresholds (require_caption) drop it, and say why.
    uncaptioned = clips[clips["caption"].isna()]
    assert len(uncaptioned) and not uncaptioned["kept"].any()
    assert all("caption.required" in f for f in uncaptioned["filtered_by"])
    assert list(clips["clip_id"]) == sorted(clips["clip_id"])


def test_the_scoring_pass_records_what_each_stage_did_and_for_how_long(curated):
    root, truth, out, report = curated
    work = json.loads((out / WORK_DIR / STAGE_WORK_FILE).read_text())
    sources = pd.read_parquet(out / "sources.parquet")
    ok = sources[sources["status"] == "ok"]
    # Every source decoded to its end, the duplicate too (it is recognised only after its clips are in).
    assert work["decode"]["sources"] == len(ok) + 1
    copy = sources[sources["uri"].str.endswith("zz_copy.mp4")]
    assert work["decode"]["video_s"] == pytest.approx(ok["duration_s"].sum() + copy["duration_s"].sum())
    assert work["decode"]["busy_s"] > 0 and work["wall_s"] > 0
    assert work["scorers"], "no scorer stage reported its work"
    for stage, done in work["scorers"].items():
        assert done["rows"] >= report["clips"]["total"] and done["batches"] >= 1, stage
        assert 0 < done["busy_s"] < work["wall_s"] * 4, stage


def test_outputs_thresholds_report_and_shards(curated):
    root, truth, out, report = curated
    thresholds = load_thresholds(out / "thresholds.yaml")
    assert yaml.safe_load((out / "thresholds.yaml").read_text())
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["thresholds_hash"] == thresholds_hash(thresholds) == report["thresholds_hash"]
    clips = pd.read_parquet(out / "clips.parquet")
    kept = set(clips.loc[clips["kept"], "clip_id"])
    assert kept

    index = pd.read_parquet(out / SHARDS_DIR / "index.parquet")
    assert tuple(index.columns) == INDEX_COLUMNS
    assert set(index["key"]) == kept
    shards = sorted(str(p) for p in (out / SHARDS_DIR).glob("*.tar"))
    seen = set()
    for sample in wds.WebDataset(shards, shardshuffle=False):
        key = sample["__key__"]
        seen.add(key)
        frames = read_frames(sample["mp4"])
        row = index[index["key"] == key].iloc[0]
        assert frames.shape[0] == row["num_frames"] and frames.shape[1:3] == (row["height"], row["width"])
        assert json.loads(sample["json"])["clip_id"] == key
        assert sample["txt"].decode().strip()
    assert seen == kept


def test_one_thumbnail_per_clip_from_the_decoded_frames(curated):
    _, _, out, _ = curated
    clips = pd.read_parquet(out / "clips.parquet")
    assert THUMB_COLUMN not in clips.columns  # the bytes travel in the stream only
    thumbs = sorted(p.stem for p in (out / THUMBS_DIR).glob("*.jpg"))
    assert thumbs == sorted(clips["clip_id"])
    for clip_id in clips["clip_id"][:3]:
        image = cv2.imread(str(thumb_path(out, clip_id)))
        assert image is not None and max(image.shape[:2]) <= THUMB_LONG_SIDE and image.std() > 0
    with pytest.raises(ValueError, match="invalid sample key"):
        thumb_path(out, "../escape")


def test_a_scorer_that_fails_on_every_batch_stops_the_job_with_its_traceback(ray_session, tmp_path):
    """A broken stage is not bad data: a scorer stage whose every batch raises (a bug) stops the job with the
    scorer's own traceback, after `ray.max_consecutive_stage_failures` batches, instead of turning into
    "every source failed"; no source is recorded as done, so a fixed rerun scores them all."""
    from curation.config import load_config
    from curation.pipeline import _score_sources
    from curation.resume import ResumeState
    from curation.sources import list_sources
    from curation.stage_guard import StageBrokenError

    class BuggyScorer:  # a scorer stage as Ray Data runs them: built from its config, called per batch
        def __init__(self, config):
            self.scale = config["scale"]

        def __call__(self, batch):
            return {**batch, "buggy_score": batch["motion_score"] * self.scale["typo"]}

    make_corpus(tmp_path, 2, seed=3, broken=False)
    config_file = tmp_path / "curate.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "scenes": {"min_clip_s": 1.0, "max_clip_s": 1.5},
                "ray": {"scorer_batch_size": 1, "max_consecutive_stage_failures": 2},
            }
        )
    )
    cfg = load_config(config_file)
    state = ResumeState(tmp_path / "out", cfg.scoring_fingerprint())
    pending = list_sources(str(tmp_path / VIDEOS_DIR), cfg.extensions)
    stages = [("buggy", BuggyScorer, {"scale": {"factor": 2.0}})]
    with pytest.raises(StageBrokenError, match="'buggy' failed on [0-9]+ batches in a row") as caught:
        _score_sources(pending, cfg, stages, state)
    assert "Traceback" in str(caught.value) and "KeyError: 'typo'" in str(caught.value)
    assert not ResumeState(tmp_path / "out", cfg.scoring_fingerprint()).entries
