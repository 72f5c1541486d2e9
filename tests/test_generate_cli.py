"""`svp generate` through the real CLI on a tiny hand-built export (no training): the prompt goes through the
caption template the stage trained with, the device and dtype defaults a user expects, and the `.json` record
that says what was done."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_test_support import one_thread  # noqa: F401 (fixture)
from shard_fixtures import make_shards

from core.errors import UserError
from curation.format import MOTION_CAPTION_TEMPLATE
from model import kernels
from model.config import LinearDiTConfig
from model.linear_dit import LinearDiT
from model.pretrained import save_pretrained
from model.video_io import read_frames
from orchestration.cli import main
from training.data.caption_template import PLAIN_TEMPLATE, caption_conditioning
from training.inference.generation import Inference, load_export
from training.worker.checkpoints import EXPORT_STATE_FILE

MEDIAN = 5


def _export(folder: Path, caption: dict | None) -> Path:
    """A tiny stage export as `training.worker.checkpoints.export_stage` lays it out (random weights, 32x32, 8 fps)."""
    torch.manual_seed(0)
    model = LinearDiT(
        LinearDiTConfig.from_preset(
            "tiny", in_channels=192, out_channels=192, patch_size=(1, 1, 1), vae_stride=(1, 8, 8)
        )
    )
    save_pretrained(model, folder)
    info = {
        "step": 1,
        "autoencoder": {"name": "space_to_depth", "path": None, "options": {"stride": [1, 8, 8]}},
        "text_encoder": {"name": "hashed", "path": None, "max_length": 16, "options": {"channels": 64}},
        "fps": 8.0,
        "height": 32,
        "width": 32,
    }
    if caption is not None:
        info["caption"] = caption
    (folder / EXPORT_STATE_FILE).write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    caption = {"template": MOTION_CAPTION_TEMPLATE, "motion_score": MEDIAN, "captions_read": 8}
    return _export(tmp_path_factory.mktemp("export"), caption)


def _generate(export: Path, out: Path, prompt: str, *extra: str) -> tuple[dict, np.ndarray]:
    argv = [
        "generate",
        str(export),
        "--prompt",
        prompt,
        "--seconds",
        "0.25",
        "--out",
        str(out),
        "--steps",
        "2",
    ]
    assert main([*argv, *extra]) == 0
    return json.loads(out.with_suffix(".json").read_text()), read_frames(out)


def test_the_prompt_gets_the_training_captions_motion_score(export, tmp_path, capsys, one_thread):  # noqa: F811
    record, frames = _generate(export, tmp_path / "a.mp4", "a red square moves right")
    assert record["prompt"] == "a red square moves right"
    assert record["model_prompt"] == f"a red square moves right motion score: {MEDIAN}."
    assert record["caption_template"] == MOTION_CAPTION_TEMPLATE
    assert record["motion_score"] == MEDIAN and record["motion_score_from"] == "median of the training clips"
    assert f"motion score: {MEDIAN}." in capsys.readouterr().out
    # The same video as the caption written out by hand: the model got exactly what it trained on.
    by_hand, same = _generate(export, tmp_path / "b.mp4", f"a red square moves right motion score: {MEDIAN}.")
    assert np.array_equal(frames, same)
    assert by_hand["motion_score_from"] == "prompt" and by_hand["model_prompt"] == by_hand["prompt"]
    chosen, _ = _generate(export, tmp_path / "c.mp4", "a red square moves right", "--motion-score", "9")
    assert (
        chosen["model_prompt"].endswith("motion score: 9.")
        and chosen["motion_score_from"] == "--motion-score"
    )


def test_a_motion_score_twice_or_for_plain_captions_is_one_line(export, tmp_path, capsys):
    argv = ["generate", str(export), "--seconds", "0.25", "--out", str(tmp_path / "a.mp4")]
    assert main([*argv, "--prompt", "a disc motion score: 3.", "--motion-score", "4"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("svp: error: the prompt already ends in 'motion score: 3.'") and err.count("\n") == 1
    )
    plain = _export(
        tmp_path / "plain", {"template": PLAIN_TEMPLATE, "motion_score": None, "captions_read": 4}
    )
    argv[1] = str(plain)
    assert main([*argv, "--prompt", "a disc", "--motion-score", "4"]) == 2
    assert "trained on captions without a motion score" in capsys.readouterr().err


def test_an_export_without_a_caption_record_takes_the_prompt_as_it_is(tmp_path, one_thread):  # noqa: F811
    old = _export(tmp_path / "old", None)
    record, _ = _generate(old, tmp_path / "a.mp4", "a disc")
    assert record["model_prompt"] == "a disc" and record["caption_template"] is None


def test_the_record_says_device_dtype_kernel_path_and_wall_time(export, tmp_path, one_thread):  # noqa: F811
    record, _ = _generate(export, tmp_path / "a.mp4", "a disc")
    assert record["device"] == "cpu" and record["dtype"] == "fp32"  # this machine has no GPU: as always
    assert record["compile"] is False and record["kernels"] is True and record["precision"] == "native"
    assert record["kernel_path"].startswith("linear attention: PyTorch path")
    assert record["wall_s"] > 0
    off, _ = _generate(export, tmp_path / "b.mp4", "a disc", "--no-kernels", "--dtype", "bf16")
    assert (
        off["kernels"] is False and off["kernel_path"] == "linear attention: PyTorch path (backend 'torch')"
    )
    assert off["dtype"] == "bf16"
    assert kernels.attention_backend() == "auto"  # --no-kernels is put back afterwards


def test_defaults_take_the_gpu_in_bf16_when_there_is_one():
    assert Inference.resolve(None, None, cuda_available=True) == Inference("cuda", "bf16")
    assert Inference.resolve(None, None, cuda_available=False) == Inference("cpu", "fp32")
    assert Inference.resolve("cpu", None, cuda_available=True).dtype == "fp32"
    assert Inference.resolve("cuda:1", "fp32", cuda_available=True) == Inference("cuda:1", "fp32")
    with pytest.raises(UserError, match="--dtype must be one of fp32, bf16, fp16, got 'int8'"):
        Inference.resolve(None, "int8", cuda_available=False)


def test_weights_load_in_the_asked_dtype(export):
    model, _, _, _ = load_export(export, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _, _, _ = load_export(export)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_the_export_records_the_template_and_median_of_the_training_captions(tmp_path):
    scored = make_shards(tmp_path / "scored", num_clips=5, frames=4, motion_scores=[1.2, 7.6, 3.0, 9.0, 2.4])
    assert caption_conditioning([str(scored)]) == {
        "template": MOTION_CAPTION_TEMPLATE,
        "motion_score": 3,
        "captions_read": 5,
    }
    plain = make_shards(tmp_path / "plain", num_clips=3, frames=4)
    assert caption_conditioning([str(plain)]) == {
        "template": PLAIN_TEMPLATE,
        "motion_score": None,
        "captions_read": 3,
    }
    assert caption_conditioning([str(scored)], limit=2)["captions_read"] == 2
