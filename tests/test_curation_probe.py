"""Probe: every broken synthetic file is rejected with the right one-line reason; good files report
duration, fps, size, codec; rotation and variable frame rate are read from real files."""

from __future__ import annotations

import pytest

from curation.config import ProbeConfig
from curation.probe import probe_source
from curation.synth import VIDEOS_DIR, make_corpus, write_phone_clip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return out, make_corpus(out, 2, seed=3)


def _probe(path, min_duration_s=1.0):
    return probe_source(str(path), path.stat().st_size, ProbeConfig(), min_duration_s)


def test_broken_files_are_rejected_with_their_reason(corpus):
    out, truth = corpus
    for name, words in truth.broken.items():
        result = _probe(out / VIDEOS_DIR / name)
        assert result.status == "rejected", name
        assert words in result.reason, (name, result.reason)
        assert "\n" not in result.reason and str(out) not in result.reason


def test_good_files_report_their_properties(corpus):
    out, truth = corpus
    for video in truth.videos:
        result = _probe(out / VIDEOS_DIR / video.file)
        assert result.status == "ok" and result.reason == ""
        assert (result.width, result.height, result.codec) == (video.width, video.height, "h264")
        assert result.fps == pytest.approx(video.fps)
        assert result.duration_s == pytest.approx(video.num_frames / video.fps, abs=0.05)
        assert result.num_frames == video.num_frames
        assert not result.variable_frame_rate
    # The same file is too short under a stricter minimum.
    strict = _probe(out / VIDEOS_DIR / truth.videos[0].file, min_duration_s=60.0)
    assert strict.status == "rejected" and strict.reason.startswith("too short")


def test_rotation_and_variable_frame_rate(tmp_path):
    result = _probe(write_phone_clip(tmp_path / "vfr.mp4", 90))
    assert result.status == "ok"
    assert result.rotation == 90
    assert (result.width, result.height) == (96, 160)  # display size, after the quarter turn
    assert result.variable_frame_rate
    assert result.fps == pytest.approx(48 / result.duration_s, rel=0.05)  # mean rate, not the nominal 24

    from curation.config import CurationConfig
    from curation.decode import SourceDecoder

    cfg = CurationConfig.model_validate({"scenes": {"min_clip_s": 1.0}})
    clips = list(SourceDecoder(str(tmp_path / "vfr.mp4"), result, cfg).clips())
    assert clips and all(c.frames.shape[1:] == (160, 96, 3) for c in clips)  # scorers see it upright
    # Clip times come from the frames' timestamps, not from frame count / nominal rate.
    assert clips[-1].end_s == pytest.approx(result.duration_s, abs=0.06)


def test_truncated_file_with_index_first_is_caught_by_the_frame_count(tmp_path):
    """A file cut short whose header survived opens fine: the decoder then finds the frames missing."""
    from curation.config import CurationConfig
    from curation.decode import DecodeError, SourceDecoder

    path = write_phone_clip(tmp_path / "whole.mp4", 0)
    result = _probe(path)
    assert result.status == "ok"
    # Pretend the header promises twice the frames that are there (as an index-first file cut in half does).
    result.num_frames *= 2
    with pytest.raises(DecodeError, match="truncated"):
        list(
            SourceDecoder(
                str(path), result, CurationConfig.model_validate({"scenes": {"min_clip_s": 1.0}})
            ).clips()
        )
