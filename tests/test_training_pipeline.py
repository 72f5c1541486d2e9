"""The four tiny stages end to end through `svp train`, tracked in one MLflow parent run, then `svp generate`
writes a block-autoregressive mp4 from the last stage's export."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from training_runs import tiny_data

from model.video_io import read_frames
from orchestration.cli import main
from training.driver.stage_lock import LOCK_FILE
from training.inference.generation import write_conditioning_samples
from training.tracking.runs import (
    PARENT_TAG,
    TAG_DATASET,
    TAG_EXPORT,
    TAG_GIT,
    TAG_INIT_FROM,
    TAG_STAGE,
    TAG_THRESHOLDS,
)

pytestmark = pytest.mark.slow
STAGES = ["image", "video", "video-hires", "long-video-ar"]


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path or None):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def _check_stage_runs(client: MlflowClient, runs, exports: dict[str, Path], tmp_path: Path) -> None:
    """One finished parent run with one finished child per stage, each chained from the previous export."""
    parents = [r for r in runs if r.data.tags[TAG_STAGE] == "-"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {
        r.data.tags[TAG_STAGE]: r for r in runs if r.data.tags.get(PARENT_TAG) == parents[0].info.run_id
    }
    assert sorted(children) == sorted(STAGES)

    init_keys = {}
    for index, name in enumerate(STAGES):
        run = children[name]
        _check_stage_run(client, run, index, exports[name])
        if index:
            # Each stage started from the previous stage's export.
            assert run.data.tags[TAG_INIT_FROM] == str(exports[STAGES[index - 1]])
            local = client.download_artifacts(run.info.run_id, "init_from/keys.json", str(tmp_path / name))
            init_keys[name] = json.loads(Path(local).read_text())
            assert init_keys[name]["loaded"] and not init_keys[name]["unexpected"]
    _check_stage_changes(children, exports, init_keys)


def _check_stage_run(client: MlflowClient, run, index: int, export: Path) -> None:
    assert run.info.status == "FINISHED"
    assert run.data.tags["svp.stage_index"] == str(index)
    assert len(run.data.tags[TAG_DATASET]) >= 8 and run.data.tags[TAG_THRESHOLDS] and run.data.tags[TAG_GIT]
    assert run.data.tags[TAG_EXPORT] == export.resolve().as_uri()
    assert run.data.params["steps"] == "8" and run.data.params["optimizer.lr"] == "0.001"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, 9))
    artifacts = _artifacts(client, run.info.run_id)
    assert {
        "config/stage.json",
        "export/model.safetensors",
        "export/config.json",
        "export/pointer.json",
    } <= artifacts
    assert any(a.startswith("samples/") and a.endswith(".mp4") for a in artifacts), artifacts


def _check_stage_changes(children: dict, exports: dict[str, Path], init_keys: dict[str, dict]) -> None:
    # The latent space and patch size change at video-hires: embedding and head are dropped and re-learned.
    hires = json.loads((exports["video-hires"] / "config.json").read_text())
    assert hires["in_channels"] == 192 and hires["patch_size"] == [1, 1, 1]
    assert "patch_embedding.weight" in init_keys["video-hires"]["dropped"]
    assert "proj_out.weight" in init_keys["video-hires"]["missing"]
    assert init_keys["long-video-ar"]["dropped"] == [] and init_keys["long-video-ar"]["missing"] == []
    assert children["video-hires"].data.params["model.overrides.in_channels"] == "192"
    # The video stages (bidirectional and block-causal) trained image-to-video jointly.
    for name in ("video", "video-hires", "long-video-ar"):
        assert children[name].data.params["image_condition_prob"] == "0.5"


def _generate_long_video(export: Path, video: Path, capsys) -> list[str]:
    """2 s at the stage's 8 fps = 16 latent frames (space-to-depth has no temporal stride) = 4 blocks of 4."""
    gen = [
        "generate",
        str(export),
        "--prompt",
        "a red square moves right",
        "--seconds",
        "2",
    ]
    capsys.readouterr()
    assert main([*gen, "--out", str(video), "--block-frames", "4", "--steps", "2"]) == 0
    # It says which inference path it took: on a CPU the PyTorch attention, eager.
    said = capsys.readouterr().out
    assert "linear attention: PyTorch path" in said and "matmuls: native; compiled: False" in said, said
    frames = read_frames(video)
    assert frames.shape == (16, 64, 64, 3)
    return gen


def _check_image_to_video(gen: list[str], tmp_path: Path, capsys) -> None:
    """Image-to-video from the same export: space-to-depth is lossless, so the first frame is the image (up
    to H.264); an unreadable image is one line."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 8:40] = (220, 30, 30)
    Image.fromarray(image).save(tmp_path / "start.png")
    started = tmp_path / "i2v.mp4"
    assert main([*gen, "--out", str(started), "--image", str(tmp_path / "start.png"), "--steps", "2"]) == 0
    first = read_frames(started)[0].astype(np.int32)
    assert np.abs(first - image).mean() < 6
    record = json.loads(started.with_suffix(".json").read_text())
    assert record["image"] == str(tmp_path / "start.png")
    assert record["image_sha256"] == hashlib.sha256((tmp_path / "start.png").read_bytes()).hexdigest()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    capsys.readouterr()
    assert main([*gen, "--out", str(started), "--image", str(tmp_path / "broken.png")]) == 2
    assert capsys.readouterr().err.startswith(f"svp: error: cannot read image {tmp_path / 'broken.png'}")


def _check_continuation(export: Path, video: Path, tmp_path: Path, capsys) -> None:
    """The long video (16 frames) and 1 s (8 frames = 2 blocks of 4) more, in one mp4."""
    more = tmp_path / "more.mp4"
    cont = ["generate", str(export), "--prompt", "it keeps moving", "--block-frames", "4"]
    assert main([*cont, "--continue", str(video), "--seconds", "1", "--out", str(more), "--steps", "2"]) == 0
    assert read_frames(more).shape == (24, 64, 64, 3)
    record = json.loads(more.with_suffix(".json").read_text())
    assert record["continued_from"] == str(video) and record["frames_kept"] == 16
    capsys.readouterr()
    assert main([*cont, "--continue", str(video), "--seconds", "0.25", "--out", str(more)]) == 2
    assert "shorter than one block of 4" in capsys.readouterr().err
    assert (
        main([*cont, "--continue", str(tmp_path / "broken.png"), "--seconds", "1", "--out", str(more)]) == 2
    )
    assert capsys.readouterr().err.startswith(f"svp: error: cannot read video {tmp_path / 'broken.png'}")


def _dead_drivers_lock(stage_folder: Path) -> Path:
    """The lock a driver killed while training the stage leaves behind (its pid has exited)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"host": socket.gethostname(), "pid": dead.pid, "since": "2026-01-01T00:00:00Z", "token": "x"}
    stage_folder.mkdir(parents=True)
    (stage_folder / LOCK_FILE).write_text(json.dumps(holder))
    return stage_folder / LOCK_FILE


def test_four_tiny_stages_chain_and_generate(ray_session, tmp_path, tmp_path_factory, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tiny_data(tmp_path_factory.getbasetemp())
    work = tmp_path / "work"
    argv = ["train", "tiny", "--var", f"data_root={data}", "--work-dir", str(work), "--workers", "1"]
    lock = _dead_drivers_lock(work / "tiny" / "image")

    assert main(argv) == 0
    assert not lock.exists()  # taken over from the dead driver, and freed at the end
    exports = {name: work / "tiny" / name / "export" for name in STAGES}
    assert all((e / "model.safetensors").is_file() for e in exports.values())
    # Each export records the template of the captions its stage read (these shards' captions have no motion score).
    caption = json.loads((exports["long-video-ar"] / "stage.json").read_text())["caption"]
    assert caption == {"template": "{caption}", "motion_score": None, "captions_read": 8}
    assert f"image: trained (no export yet) and exported to {exports['image']}" in capsys.readouterr().out

    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    _check_stage_runs(client, client.search_runs([experiment.experiment_id]), exports, tmp_path)

    # Rerunning the same command finds every export and trains nothing; the parent run is re-attached.
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("already exported") == 4
    assert len(client.search_runs([experiment.experiment_id])) == 5

    video = tmp_path / "long.mp4"
    gen = _generate_long_video(exports["long-video-ar"], video, capsys)
    _check_image_to_video(gen, tmp_path, capsys)
    _check_continuation(exports["long-video-ar"], video, tmp_path, capsys)

    # What the demo shows after the long video (training.inference.generation.write_conditioning_samples).
    samples = write_conditioning_samples(
        exports["long-video-ar"],
        tmp_path / "samples",
        "a red square",
        video,
        seconds=1,
        block_frames=4,
        steps=2,
    )
    assert read_frames(samples["image_to_video"]).shape == (8, 64, 64, 3)
    assert read_frames(samples["continued"]).shape == (24, 64, 64, 3)


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert (
        capsys.readouterr().err.strip() == f"svp: error: pipeline file not found: {tmp_path / 'missing.yaml'}"
    )
    argv = ["train", "tiny", "--var", f"data_root={tmp_path}", "--stage", "nope", "--work-dir", str(tmp_path)]
    assert main(argv) == 2
    assert "no stage named 'nope'" in capsys.readouterr().err
    assert (
        main(["generate", str(tmp_path), "--prompt", "x", "--seconds", "1", "--out", str(tmp_path / "a.mp4")])
        == 2
    )
    assert "is not a stage export" in capsys.readouterr().err
