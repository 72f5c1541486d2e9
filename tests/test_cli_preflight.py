"""Validation before the expensive part, through the real `svp` entry point: every request error is one line
found before anything decodes or trains, and leaves no output folder, work dir or MLflow run behind."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml
from shard_fixtures import make_shards

import training
from orchestration.cli import main
from training.config.loader import PRESET_NAMES


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("svp: error: ") and "\n" not in err and "Traceback" not in err, err
    return err.removeprefix("svp: error: ")


def test_unknown_score_column_fails_before_the_output_folder_exists(tmp_path, capsys):
    thresholds = tmp_path / "t.yaml"
    thresholds.write_text(yaml.safe_dump({"scores": {"aesthetics_score": {"min": 4.5}}}))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(b"not decoded: the thresholds are checked first")
    out = tmp_path / "out"
    argv = ["curate", "--input", str(tmp_path / "in"), "--output", str(out), "--thresholds", str(thresholds)]
    assert main(argv) == 2
    err = _error(capsys)
    assert "'aesthetics_score'" in err and "aesthetic_score" in err
    assert not out.exists()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"), num_clips=4)


def test_misspelt_stage_key_is_named_first(tmp_path, data_root, capsys):
    tiny = yaml.safe_load((Path(training.__file__).parent / "presets" / "tiny.yaml").read_text())
    tiny["stages"][0]["stepz"] = tiny["stages"][0].pop("steps")  # so `steps` is missing too
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump(tiny))
    argv = ["train", str(pipeline), "--var", f"data_root={data_root}", "--work-dir", str(tmp_path / "w")]
    assert main(argv) == 2
    assert (
        _error(capsys)
        == f"{pipeline}: stages[0].stepz: unknown key (did you mean 'steps'?) (and 1 more error)"
    )


def test_missing_variable_and_unknown_preset_say_what_to_type(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SVP_VAR_DATA_ROOT", raising=False)
    monkeypatch.delenv("SVP_DATA_ROOT", raising=False)
    assert main(["train", "tiny", "--work-dir", str(tmp_path / "w")]) == 2
    err = _error(capsys)
    assert "undefined variable ${data_root}: give it with --var data_root=PATH" in err
    assert "load_pipeline" not in err
    # As a user types it, in a process of its own.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [sys.executable, "-m", "orchestration.cli", "train", "tiy"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    err = done.stderr.strip()
    assert err.startswith("svp: error: ") and "\n" not in err and "'tiy'" in err
    assert all(name in err for name in PRESET_NAMES)
    assert not (tmp_path / "w").exists()


def test_failed_preflight_leaves_no_work_dir_and_no_mlflow_run(tmp_path, data_root, capsys):
    work = tmp_path / "work"
    missing = tmp_path / "nowhere"
    assert main(["train", "tiny", "--var", f"data_root={missing}", "--work-dir", str(work)]) == 2
    assert _error(capsys) == f"stage 'image': data folder {missing} does not exist"
    assert not work.exists()
    # A stage that starts from a stage that was never exported: found before any run is created.
    argv = ["train", "tiny", "--var", f"data_root={data_root}", "--work-dir", str(work), "--stage", "video"]
    assert main(argv) == 2
    err = _error(capsys)
    assert "init_from.stage 'image' has no export" in err and "run that stage first" in err
    assert not work.exists()


def test_missing_weight_folder_is_found_before_training(tmp_path, data_root, capsys):
    tiny = yaml.safe_load((Path(training.__file__).parent / "presets" / "tiny.yaml").read_text())
    tiny["stages"][0]["text_encoder"] = {"name": "hashed", "path": "weights/te", "options": {"channels": 64}}
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump(tiny))
    work = tmp_path / "w"
    assert main(["train", str(pipeline), "--var", f"data_root={data_root}", "--work-dir", str(work)]) == 2
    assert _error(capsys) == f"stage 'image': text_encoder.path {tmp_path / 'weights' / 'te'} does not exist"
    assert not work.exists()


def test_zero3_is_refused_with_the_file_and_key(tmp_path, capsys):
    # ZeRO-3 partitions the weights, but the EMA fold and sampling read rank 0's full module.
    pipeline = tmp_path / "zero3.yaml"
    tiny = Path(str(resources.files("training") / "presets" / "tiny.yaml")).read_text()
    pipeline.write_text(tiny.replace("zero_stage: 2", "zero_stage: 3"))
    argv = ["train", str(pipeline), "--var", "data_root=/nowhere", "--work-dir", str(tmp_path / "w")]
    assert main(argv) == 2
    err = _error(capsys)
    assert err.startswith(f"{pipeline}: stages[0].deepspeed.zero_stage: ZeRO-3 is not supported yet"), err
    assert not (tmp_path / "w").exists()


def test_set_overrides_a_stage_key_and_rejects_an_unknown_one(tmp_path, capsys):
    data = str(tmp_path / "nowhere")
    argv = ["train", "tiny", "--var", f"data_root={data}", "--work-dir", str(tmp_path / "w")]
    assert main([*argv, "--set", "stages.video.optimizer.lr=3e-3"]) == 2  # the data check, after the --set
    assert "optimizer" not in _error(capsys)
    assert main([*argv, "--set", "stages.vdeo.steps=2"]) == 2
    assert "stages has no item 'vdeo' (give an index, a name or *: image, video" in _error(capsys)
    assert main([*argv, "--set", "stages.1.optimizr.lr=1"]) == 2
    err = _error(capsys)  # said against the flag, not the bundled preset's path the user never wrote
    assert err.startswith("--set stages.1.optimizr.lr: unknown key 'optimizr' (did you mean 'optimizer'?)"), (
        err
    )
    assert not (tmp_path / "w").exists()
