"""`save_pretrained` / `load_pretrained`: the consolidated checkpoint folder training exports."""

from __future__ import annotations

import json

import pytest
import torch
from model_test_support import one_thread  # noqa: F401  (fixture)
from safetensors.torch import load_file, save_file

from model import LinearDiT, LinearDiTConfig
from model.pretrained import load_pretrained, save_pretrained

# Tiny tensors: one intra-op thread avoids synchronisation costs on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> LinearDiT:
    torch.manual_seed(0)
    model = LinearDiT(LinearDiTConfig.from_preset("tiny", depth=1, timestep_truncation=True))
    with torch.no_grad():
        model.blocks[0].ff.conv_temp.weight.normal_(0.0, 0.05)
    return model.eval()


def test_round_trip_is_exact(tmp_path):
    model = _model()
    folder = save_pretrained(model, tmp_path / "export")
    assert json.loads((folder / "config.json").read_text())["timestep_truncation"] is True
    loaded = load_pretrained(folder)
    assert loaded.config == model.config
    assert loaded.config.name == "tiny"
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    latents, text = torch.randn(1, 48, 2, 8, 8), torch.randn(1, 4, 64)
    with torch.no_grad():
        expected = model(latents, text, 321.7)
        got = loaded.eval()(latents, text, 321.7)
    # Same weights; only kernel choice (memory alignment of the loaded tensors) may differ in the last bit.
    assert ((got - expected).norm() / expected.norm()).item() < 1e-6


def test_load_casts_to_dtype(tmp_path):
    save_pretrained(_model(), tmp_path)
    loaded = load_pretrained(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_missing_folder_and_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found: .*no-such-export"):
        load_pretrained(tmp_path / "no-such-export")
    save_pretrained(_model(), tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"a/model\.safetensors"):
        load_pretrained(tmp_path / "a")


def test_wrong_shape_names_the_key(tmp_path):
    save_pretrained(_model(), tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    state["proj_out.bias"] = torch.zeros(7)
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"proj_out\.bias has shape \(7,\), expected \(192,\)"):
        load_pretrained(tmp_path)
