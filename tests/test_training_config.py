"""Stage configs: presets load and resolve; every user error is one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.errors import UserError
from training.config import latent_frames, load_pipeline, load_preset
from training.worker.step import deepspeed_config

BASE = {
    "name": "demo",
    "defaults": {
        "optimizer": {"lr": 1e-3},
        "checkpoint": {"every": 2},
        "autoencoder": {"name": "space_to_depth", "options": {"stride": [1, 4, 4]}},
        "text_encoder": {"name": "hashed", "options": {"channels": 64}},
        "model": {"preset": "tiny"},
    },
    "stages": [
        {
            "name": "img",
            "kind": "image",
            "data": ["shards"],
            "buckets": [{"height": 32, "width": 32, "num_frames": 1, "batch_size": 2}],
            "steps": 3,
        },
        {
            "name": "vid",
            "kind": "video",
            "data": ["${data_root}/clips", "s3://bucket/more"],
            "buckets": [{"height": 32, "width": 32, "num_frames": 9, "batch_size": 2}],
            "steps": 3,
            "init_from": {"stage": "img"},
        },
    ],
}


def write(tmp_path: Path, data: dict, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def edited(**stage_changes) -> dict:
    """BASE with keys of stage 1 replaced (None deletes)."""
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in stage_changes.items():
        if value is None:
            data["stages"][1].pop(key)
        else:
            data["stages"][1][key] = value
    return data


def load_error(tmp_path: Path, data: dict, **kwargs) -> str:
    path = write(tmp_path, data)
    with pytest.raises(ValueError) as info:
        load_pipeline(path, variables={"data_root": "/data"}, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message[len(str(path)) + 2 :]


def test_pipeline_resolves_variables_defaults_and_relative_paths(tmp_path):
    pipe = load_pipeline(write(tmp_path, BASE), variables={"data_root": "/data"})
    img, vid = pipe.stages
    assert pipe.stage_names == ["img", "vid"]
    assert img.data == [str(tmp_path / "shards")]  # relative to the YAML's folder
    assert vid.data == ["/data/clips", "s3://bucket/more"]  # URIs untouched
    assert vid.optimizer.lr == 1e-3 and vid.checkpoint.every == 2  # from defaults
    assert vid.init_from.stage == "img"
    assert vid.model_config().in_channels == 48


def test_environment_variable_and_file_variables(tmp_path, monkeypatch):
    data = edited()
    data["variables"] = {"data_root": "rel"}
    path = write(tmp_path, data)
    assert load_pipeline(path).stages[1].data[0] == str(tmp_path / "rel" / "clips")
    monkeypatch.setenv("SVP_VAR_DATA_ROOT", "/env")
    assert load_pipeline(path).stages[1].data[0] == "/env/clips"
    assert load_pipeline(path, variables={"data_root": "/arg"}).stages[1].data[0] == "/arg/clips"
    # Relative values from the caller or the environment are taken from the current directory.
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("SVP_VAR_DATA_ROOT", "here")
    assert load_pipeline(path).stages[1].data[0] == str(tmp_path / "cwd" / "here" / "clips")


def test_only_svp_var_environment_variables_are_variables(tmp_path, monkeypatch):
    # Another SVP_* setting is not a variable; the variables' old names get a message saying the new one.
    path = write(tmp_path, edited())
    monkeypatch.delenv("SVP_VAR_DATA_ROOT", raising=False)
    monkeypatch.setenv("SVP_PEAK_TFLOPS", "100")
    monkeypatch.setenv("SVP_DATA_ROOT", "/old")
    with pytest.raises(
        UserError, match="SVP_DATA_ROOT is set, but variables are read from SVP_VAR_DATA_ROOT now"
    ):
        load_pipeline(path)
    data = edited()
    data["stages"][1]["data"] = ["${peak_tflops}/clips"]
    with pytest.raises(UserError, match=r"undefined variable \$\{peak_tflops\}"):
        load_pipeline(write(tmp_path, data))


def test_relative_weight_paths_follow_the_yaml(tmp_path):
    data = edited(init_from={"path": "exports/previous"})
    data["stages"][1]["text_encoder"] = {"name": "gemma2", "path": "weights/gemma"}
    stage = load_pipeline(write(tmp_path, data), variables={"data_root": "/d"}).stages[1]
    assert stage.init_from.path == str(tmp_path / "exports" / "previous")
    assert stage.text_encoder.path == str(tmp_path / "weights" / "gemma")
    data["work_dir"] = "runs"
    assert load_pipeline(write(tmp_path, data), variables={"data_root": "/d"}).work_dir == str(
        tmp_path / "runs"
    )


def test_overrides_by_name_index_and_wildcard(tmp_path):
    path = write(tmp_path, BASE)
    pipe = load_pipeline(
        path,
        variables={"data_root": "/d"},
        overrides={"stages.*.steps": 7, "stages.vid.optimizer.lr": 0.5, "stages.0.seed": 3},
    )
    assert [s.steps for s in pipe.stages] == [7, 7]
    assert pipe.stage("vid").optimizer.lr == 0.5 and pipe.stage("img").optimizer.lr == 1e-3
    assert pipe.stage("img").seed == 3
    with pytest.raises(ValueError, match="no stage named 'nope'"):
        pipe.stage("nope")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"optimizer": {"lr": 0}}, "stages[1].optimizer.lr: Input should be greater than 0"),
        ({"stepz": 3}, "stages[1].stepz: unknown key"),
        ({"kind": "audio"}, "stages[1].kind: Input should be 'image' or 'video'"),
        ({"steps": None}, "stages[1].steps: Field required"),
        (
            {"deepspeed": {"bf16": "maybe"}},
            "stages[1].deepspeed.bf16: must be 'auto', true or false",
        ),
        ({"init_from": {"stage": "vid"}}, "stages[1].init_from.stage: 'vid' is not an earlier stage"),
        ({"init_from": {"stage": "img", "path": "/x"}}, "stages[1].init_from: give exactly one"),
        ({"name": "bad name"}, "stages[1].name: 'bad name' must be 1-128 characters"),
        ({"model": {"preset": "huge"}}, "stages[1].model: unknown model preset 'huge'"),
        (
            {"model": {"preset": "tiny", "overrides": {"depthh": 3}}},
            "stages[1].model: unknown LinearDiTConfig keys",
        ),
        (
            {"buckets": [{"height": 30, "width": 32, "num_frames": 9, "batch_size": 2}]},
            "stages[1].buckets[0].height: 30 is not a multiple of 8 (autoencoder stride 4 × patch 2)",
        ),
        (
            {"buckets": [{"height": 32, "width": 32, "num_frames": 9, "batch_size": 0}]},
            "stages[1].buckets[0].batch_size: Input should be greater than 0",
        ),
        (
            {"chunk_sizes": [4, 4]},
            "stages[1].chunk_sizes: chunks sum to 8 latent frames but bucket 32x32_t9 has 9",
        ),
        (
            {"optimizer": {"lr": 1e-3, "betas": [0.9, 1.5]}},
            "stages[1].optimizer.betas: each beta",
        ),
        ({"autoencoder": {"name": "vqgan"}}, "stages[1].autoencoder.name: unknown autoencoder 'vqgan'"),
        (
            {"autoencoder": {"name": "space_to_depth", "options": {"stride": [1, 8, 8]}}},
            "stages[1].autoencoder.options: stride [1, 8, 8] differs from the model's vae_stride [1, 4, 4]",
        ),
        (
            {"text_encoder": {"name": "hashed", "options": {"channels": 32}}},
            "stages[1].text_encoder.options: 32 channels but the model takes caption_channels=64",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path, change, expected):
    assert load_error(tmp_path, edited(**change)).startswith(expected)


def test_image_stage_rejects_frames(tmp_path):
    data = edited()
    data["stages"][0]["buckets"][0]["num_frames"] = 9
    assert load_error(tmp_path, data).startswith(
        "stages[0].buckets[0].num_frames: an image stage takes single frames, got 9"
    )


def test_error_in_defaults_is_reported_under_defaults(tmp_path):
    data = edited()
    data["defaults"]["optimizer"]["lrr"] = 1
    assert load_error(tmp_path, data).startswith("defaults.optimizer.lrr: unknown key")
    data = edited()
    data["defaults"]["checkpoint"]["every"] = -1
    assert load_error(tmp_path, data).startswith("defaults.checkpoint.every: Input should be greater than 0")


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pipeline file not found: .*missing.yaml"):
        load_pipeline(tmp_path / "missing.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nstages: [\n")
    with pytest.raises(ValueError, match=r"broken.yaml: invalid YAML at line \d+: "):
        load_pipeline(path)
    data = edited()
    data["extra_top"] = 1
    assert load_error(tmp_path, data).startswith("extra_top: unknown key")
    with pytest.raises(
        ValueError, match=r"pipeline.yaml: stages\[1\].data\[0\]: undefined variable \$\{data_root\}"
    ):
        load_pipeline(write(tmp_path, BASE))


def test_tiny_preset_matches_the_model_and_hands_off_across_a_latent_change():
    pipe = load_preset("tiny", variables={"data_root": "/data"})
    assert pipe.stage_names == ["image", "video", "video-hires", "long-video-ar"]
    image, video, hires, ar = pipe.stages
    assert image.kind == "image" and all(b.num_frames == 1 for b in image.buckets)
    assert video.init_from.stage == "image"
    # The 720p analog changes the latent space: new channel count and patch size, fresh in/out layers.
    assert (hires.model_config().in_channels, hires.model_config().patch_size) == (192, (1, 1, 1))
    assert hires.init_from.stage == "video" and hires.init_from.drop_keys
    assert sum(ar.chunk_sizes) == latent_frames(ar.buckets[0].num_frames, ar.model_config().vae_stride[0])
    assert ar.chunk_sigma_strategy == "incremental"
    ds = deepspeed_config(video, world_size=2, use_gpu=False)
    assert ds["bf16"] == {"enabled": False}  # fp32 on CPU
    assert ds["zero_optimization"] == {"stage": 2}
    assert ds["train_batch_size"] == 2 * ds["train_micro_batch_size_per_gpu"]


def test_real_preset_uses_the_published_optimiser():
    pipe = load_preset("sana-video", variables={"data_root": "/data", "weights_root": "/w"})
    assert pipe.stage_names == ["image-256", "video-256", "video-720p", "long-video-ar"]
    for stage in pipe.stages:
        opt = stage.optimizer
        assert (opt.lr, opt.betas, opt.eps, opt.weight_decay) == (5e-5, (0.9, 0.999), 1e-10, 0.0)
        assert (opt.warmup_steps, opt.grad_clip) == (500, 0.1)
        assert stage.deepspeed.zero_stage == 2 and stage.deepspeed.activation_checkpointing
        assert stage.model_config().gradient_checkpointing
        ds = deepspeed_config(stage, world_size=8, use_gpu=True)
        assert ds["bf16"] == {"enabled": True} and ds["gradient_clipping"] == 0.1
        assert ds["scheduler"]["params"]["warmup_num_steps"] == 500
    image, low, hd, ar = pipe.stages
    assert image.buckets[0].height == 256 and image.kind == "image"
    assert {(b.height * b.width <= 256 * 448, b.num_frames) for b in low.buckets} == {(True, 81)}
    assert hd.model.preset == "sana-video-2b-720p" and hd.autoencoder.name == "ltx2"
    assert hd.init_from.stage == "video-256" and set(hd.init_from.drop_keys) == {
        "patch_embedding.*",
        "proj_out.*",
    }
    assert ar.chunk_sizes == [11, 10, 10] and ar.chunk_sigma_strategy == "incremental"
    assert image.data == ["/data/image"] and image.autoencoder.path == "/w/Wan2.1-VAE"


def test_fingerprint_and_flat_params():
    pipe = load_preset("tiny", variables={"data_root": "/data"})
    video = pipe.stage("video")
    assert (
        video.fingerprint()
        == load_preset("tiny", variables={"data_root": "/data"}).stage("video").fingerprint()
    )
    changed = video.replace(steps=video.steps + 1)
    assert changed.fingerprint() != video.fingerprint()
    params = video.to_flat_params()
    assert params["optimizer.lr"] == "0.001"
    assert params["buckets.0.num_frames"] == "9"
    assert params["init_from.stage"] == "image"
    assert all(isinstance(v, str) for v in params.values())
    with pytest.raises(ValueError):
        video.replace(steps=0)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown training preset 'huge'"):
        load_preset("huge")
