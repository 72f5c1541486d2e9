"""`svp encode` on real shards with a tiny Wan2.1 VAE and a tiny Gemma-2 saved and loaded through the real
loaders, on real Ray Data: the latents are what encoding directly gives, a run SIGKILLed in the middle and
run again writes byte-identical files, and a stage trains on them (and resumes) without building either
encoder."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from process_groups import own_session_svp, wait_while_running
from shard_fixtures import broken_keys, make_shards
from test_model_autoencoders import _tiny_wan
from test_model_text_encoders import _tiny_gemma
from test_training_loop import fixed_loss
from training_runs import sqlite_tracker

from model import LinearDiT
from model.autoencoders import build_autoencoder
from model.pretrained import load_pretrained
from model.text_encoders import build_text_encoder
from training.config import load_preset
from training.config.schema import AutoencoderSpec, ModelSpec, PipelineConfig, TextEncoderSpec
from training.data.buckets import DataPosition
from training.data.latent_store import (
    ENCODE_WINDOW_SEED,
    WORK_DIR,
    encoding_id,
    encoding_identity,
    latents_folder,
)
from training.data.shard_reader import ShardReader
from training.data.stage_data import StageData
from training.data.video_clips import clip_from_members, clip_rng
from training.driver.drills import FaultInjection, fault_drills
from training.driver.stage_run import run_stage
from training.encode.encode_job import run_encode
from training.worker.step import StageStep, step_generator


def encoded_stage(base: Path, data: Path, **overrides):
    """The tiny preset's video stage on the tiny Wan VAE (4 channels, stride 4x8x8) and tiny Gemma-2."""
    values = {
        "stages.video.init_from": None,
        "stages.video.sample": None,
        "stages.video.ema": None,
        "stages.video.steps": 8,
        "stages.video.checkpoint.every": 4,
        "stages.video.latents": "required",
        **overrides,
    }
    stage = load_preset("tiny", variables={"data_root": str(data)}, overrides=values).stage("video")
    model = {"in_channels": 4, "out_channels": 4, "vae_stride": (4, 8, 8), "caption_channels": 32}
    return stage.replace(
        autoencoder=AutoencoderSpec(name="wan2.1", path=str(base / "vae")),
        text_encoder=TextEncoderSpec(name="gemma2", path=str(base / "gemma"), max_length=8),
        model=ModelSpec(preset="tiny", overrides=model),
    )


@pytest.fixture(scope="module")
def encoded(ray_session, tmp_path_factory):
    """Shards of 6 clips in 3 shards (one undecodable, one without caption), encoded once."""
    base = tmp_path_factory.mktemp("encode")
    _tiny_wan(base / "vae")
    _tiny_gemma(base / "gemma")
    data = make_shards(
        base / "data", num_clips=6, frames=24, fps=12.0, seed=5, clips_per_shard=2, bad_video=1, no_caption=1
    )
    stage = encoded_stage(base, data)
    (result,) = run_encode([stage], batch_size=2)
    return base, data, stage, result


def test_latents_are_what_encoding_directly_gives(encoded):
    base, data, stage, result = encoded
    assert (result.samples, result.encoded, result.shards) == (6, 4, 3)
    assert {key: reason for key, reason, _ in result.failures} == broken_keys(data)

    loader = StageData(stage)
    assert loader.latents is not None
    vae = build_autoencoder("wan2.1", base / "vae")
    gemma = build_text_encoder("gemma2", base / "gemma", max_length=8)
    reader, bucket = ShardReader(), stage.buckets[0]
    for index, key in enumerate(loader.keys):
        if key in broken_keys(data):
            continue
        stored = loader.latents.read(reader, index, key)
        members = reader.read_sample(loader.shard_uris[loader.shard_id[index]], key)
        rng = clip_rng(ENCODE_WINDOW_SEED, 0, key)
        size = (bucket.height, bucket.width, bucket.num_frames)
        video, caption = clip_from_members(members, "", key, 24, 12.0, size, stage.target_fps, rng)
        text, mask = gemma.encode([caption])
        assert stored.caption == caption
        torch.testing.assert_close(stored.latents, vae.encode(video[None])[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stored.text, text[0], rtol=1e-5, atol=1e-5)
        assert torch.equal(stored.mask, mask[0])
    empty_text, empty_mask = gemma.encode([""])
    torch.testing.assert_close(loader.latents.empty_text, empty_text[0])
    assert torch.equal(loader.latents.empty_mask, empty_mask[0])


def test_caption_dropout_feeds_the_empty_caption_and_no_encoder_is_built(encoded):
    _, _, stage, _ = encoded
    batch = next(StageData(stage.replace(caption_dropout=0.5)).batches())
    assert batch.video is None and batch.encoded is not None
    step_math = StageStep(stage.replace(caption_dropout=0.5), torch.device("cpu"), torch.float32)
    generator = step_generator(0, 0, 3)
    drop = torch.rand(2, generator=step_generator(0, 0, 3)) < 0.5
    latents, text, mask = step_math.encode(batch, generator)
    assert step_math._autoencoder is None and step_math._text_encoder is None
    assert torch.equal(latents, batch.encoded.latents)
    for i, dropped in enumerate(drop.tolist()):
        want_text = batch.encoded.empty_text if dropped else batch.encoded.text[i]
        assert torch.equal(text[i], want_text)
        assert torch.equal(mask[i], batch.encoded.empty_mask if dropped else batch.encoded.mask[i])
    # Both paths draw the dropout first: the generator is left in the same state.
    assert torch.equal(torch.rand(3, generator=generator), torch.rand(3, generator=_after_dropout()))


def _after_dropout() -> torch.Generator:
    generator = step_generator(0, 0, 3)
    torch.rand(2, generator=generator)
    return generator


def test_latent_stream_resumes_exactly_and_on_another_world_size(encoded):
    _, _, stage, _ = encoded
    full = [b.keys for b in _take(StageData(stage), 5)]
    saved = _take(StageData(stage), 2)[-1].position
    resumed = [b.keys for b in _take(StageData(stage), 3, DataPosition.from_dict(saved.to_dict()))]
    assert resumed == full[2:]
    two = [_take(StageData(stage, rank, 2), 1)[0] for rank in range(2)]
    on_one = [b.keys for b in _take(StageData(stage), 2, two[0].position)]
    assert on_one == full[2:4]  # the global order continues


def _take(data: StageData, n: int, position=None):
    stream = data.batches(position)
    return [next(stream) for _ in range(n)]


@pytest.mark.slow
def test_a_killed_encode_reruns_to_byte_identical_files(encoded, tmp_path):
    base, data, stage, result = encoded
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("latents"))
    pipeline = tmp_path / "pipeline.yaml"
    resolved = {**stage.resolved(), "data": [str(copy)]}
    pipeline.write_text(yaml.safe_dump({"name": "enc", "stages": [resolved]}))
    out = copy / "shards" / Path(result.out_dir).relative_to(data / "shards")

    def first_shard_done() -> bool:
        return (out / WORK_DIR).is_dir() and any((out / WORK_DIR).iterdir())

    _sigkill_when(["encode", str(pipeline), "--batch-size", "2"], first_shard_done)
    assert not (out / "encoding.json").exists()

    (rerun,) = run_encode([stage.replace(data=[str(copy)])], batch_size=2)
    assert 1 <= rerun.shards_done_before < 3
    assert _files(out) == _files(Path(result.out_dir))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _sigkill_when(args: list[str], ready, timeout_s: float = 300) -> None:
    """Run `svp ARGS` in its own session with its own Ray; SIGKILL the whole process group once `ready()`."""
    with own_session_svp(args) as proc:
        wait_while_running(proc, ready, timeout_s, "the kill")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


@pytest.mark.slow
def test_a_stage_trains_and_resumes_on_latents_without_building_the_encoders(encoded, tmp_path):
    base, _, stage, _ = encoded
    stage = stage.replace(steps=12)
    # Weights that cannot load, with the same size and mtime (so the same encoding id): a worker that built
    # the VAE or the text encoder would fail the stage.
    weights = {
        p: p.read_bytes() for p in [*base.glob("vae/*.safetensors"), *base.glob("gemma/*.safetensors")]
    }
    assert len(weights) == 2
    try:
        for path, data in weights.items():
            stat = path.stat()
            path.write_bytes(b"\0" * len(data))
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        pipeline = PipelineConfig(name="enc", stages=[stage])
        work = tmp_path / "work"
        tracker = sqlite_tracker(pipeline, work)
        fault = FaultInjection(kill_at_step=6, rank=0, marker=str(tmp_path / "killed.txt"))
        with fault_drills():
            result = run_stage(pipeline, "video", workers=1, work_dir=work, tracker=tracker, fault=fault)
    finally:
        for path, data in weights.items():
            stat = path.stat()
            path.write_bytes(data)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    client = MlflowClient(tracker.tracking_uri)
    resumed = client.get_metric_history(result.mlflow_run_id, "train/resumed_from_step")
    assert [m.value for m in resumed] == [4.0]  # killed at step 6, resumed from the step-4 checkpoint

    torch.manual_seed(stage.seed)
    initial = LinearDiT(stage.model_config())  # the worker's fresh init
    step_math = StageStep(stage, torch.device("cpu"), torch.float32)
    batch = next(StageData(stage).batches())
    before = fixed_loss(initial, step_math, batch)
    after = fixed_loss(load_pretrained(result.export_dir), step_math, batch)
    assert after < 0.9 * before, (before, after)
    assert step_math._autoencoder is None and step_math._text_encoder is None


def test_a_stage_never_encoded_trains_from_clips_without_a_word(tmp_path, caplog):
    """The default (no `svp encode`) is not worth a console line per stage; an encoding the stage cannot use
    is, and `latents: required` says which case it is."""
    data = make_shards(tmp_path / "data", 2, clips_per_shard=2)
    stage = load_preset("tiny", variables={"data_root": str(data)}).stage("video")
    with caplog.at_level(logging.DEBUG, logger="svp.training"):
        stage_data = StageData(stage, 0, 1, 0)
    assert stage_data.latents is None
    said = [r.levelno for r in caplog.records if "encoding clips while training" in r.getMessage()]
    assert said == [logging.DEBUG], caplog.text
    with pytest.raises(ValueError, match="nothing was encoded for this stage"):
        StageData(stage.replace(latents="required"), 0, 1, 0)

    # An encoding that was started and never finished (its folder, no record): said at INFO.
    shards = stage_data.entries[0].folder
    Path(latents_folder(shards, encoding_id(encoding_identity(stage)))).mkdir(parents=True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="svp.training"):
        assert StageData(stage, 0, 1, 0).latents is None
    assert "has no complete encoding (run `svp encode` for this stage)" in caplog.text
