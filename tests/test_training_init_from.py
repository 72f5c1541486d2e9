"""Weights-only stage hand-off: exact loads, dropped/re-initialised keys, FFN growth, shape errors."""

from __future__ import annotations

import pytest
import torch

from model import LinearDiT, LinearDiTConfig
from model.pretrained import save_pretrained
from training.errors import ShapeMismatchError
from training.worker.init_from import init_from_weights

HIRES = {"in_channels": 192, "out_channels": 192, "patch_size": (1, 1, 1), "vae_stride": (1, 8, 8)}


def _export(tmp_path, seed: int = 0, **overrides) -> tuple[LinearDiT, object]:
    torch.manual_seed(seed)
    model = LinearDiT(LinearDiTConfig.from_preset("tiny", **overrides))
    # conv_temp is zero at init; give it weights so the test sees it being carried over.
    for block in model.blocks:
        torch.nn.init.normal_(block.ff.conv_temp.weight, std=0.02)
    folder = save_pretrained(model, tmp_path / "export")
    return model, folder


def _inputs(config: LinearDiTConfig, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, config.in_channels, 3, 8, 8, generator=g)
    text = torch.randn(2, 5, config.caption_channels, generator=g)
    timesteps = torch.tensor([100.0, 700.0])
    return latents, text, timesteps


def test_same_architecture_loads_every_key_exactly(tmp_path):
    source, folder = _export(tmp_path)
    torch.manual_seed(123)
    target = LinearDiT(LinearDiTConfig.from_preset("tiny"))
    report = init_from_weights(target, folder)
    assert report.missing == [] and report.unexpected == [] and report.padded == []
    assert len(report.loaded) == len(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(source(*_inputs(source.config)), target(*_inputs(target.config)))


def test_latent_space_change_drops_embedding_and_head(tmp_path):
    source, folder = _export(tmp_path)
    torch.manual_seed(5)
    target = LinearDiT(LinearDiTConfig.from_preset("tiny", **HIRES))
    fresh_embed = target.patch_embedding.weight.detach().clone()

    with pytest.raises(ShapeMismatchError, match=r"patch_embedding\.weight .*drop_keys"):
        init_from_weights(target, folder)

    report = init_from_weights(target, folder, drop_keys=["patch_embedding.*", "proj_out.*"])
    assert sorted(report.dropped) == [
        "patch_embedding.bias",
        "patch_embedding.weight",
        "proj_out.bias",
        "proj_out.weight",
    ]
    assert sorted(report.missing) == sorted(report.dropped)
    assert torch.equal(target.patch_embedding.weight, fresh_embed)
    assert torch.equal(target.blocks[1].attn1.to_q.weight, source.blocks[1].attn1.to_q.weight)
    assert torch.equal(target.blocks[0].ff.conv_temp.weight, source.blocks[0].ff.conv_temp.weight)


def test_reinit_keys_keep_the_fresh_init(tmp_path):
    source, folder = _export(tmp_path)
    torch.manual_seed(9)
    target = LinearDiT(LinearDiTConfig.from_preset("tiny"))
    fresh = target.scale_shift_table.detach().clone()
    report = init_from_weights(target, folder, reinit_keys=["scale_shift_table"])
    assert report.reinitialized == ["scale_shift_table"]
    assert "scale_shift_table" not in report.missing
    assert torch.equal(target.scale_shift_table, fresh)
    assert not torch.equal(fresh, source.scale_shift_table)


def test_ffn_growth_preserves_the_function_and_lets_new_channels_learn(tmp_path):
    source, folder = _export(tmp_path)  # tiny: mlp_ratio 2 -> hidden 128
    target = LinearDiT(LinearDiTConfig.from_preset("tiny", mlp_ratio=3.0))  # hidden 192

    with pytest.raises(ShapeMismatchError, match="pad_ffn"):
        init_from_weights(target, folder)

    report = init_from_weights(target, folder, pad_ffn=True)
    assert report.missing == [] and report.unexpected == []
    assert any(k.endswith("ff.conv_inverted.weight") for k in report.padded)
    assert any(k.endswith("ff.conv_point.weight") for k in report.padded)
    ff_src, ff_dst = source.blocks[0].ff, target.blocks[0].ff
    old, new = 128, 192
    # GLU halves padded separately: value rows [0, old), gate rows [new, new + old).
    assert torch.equal(ff_dst.conv_inverted.weight[:old], ff_src.conv_inverted.weight[:old])
    assert torch.equal(ff_dst.conv_inverted.weight[new : new + old], ff_src.conv_inverted.weight[old:])
    assert torch.equal(ff_dst.conv_depth.bias[new : new + old], ff_src.conv_depth.bias[old:])
    assert torch.count_nonzero(ff_dst.conv_point.weight[:, old:]) == 0

    latents, text, timesteps = _inputs(source.config)
    with torch.no_grad():
        torch.testing.assert_close(
            target(latents, text, timesteps), source(latents, text, timesteps), rtol=1e-5, atol=1e-6
        )
    target(latents, text, timesteps).square().mean().backward()
    assert ff_dst.conv_point.weight.grad[:, old:].abs().sum() > 0


def test_ffn_shrink_is_a_shape_error(tmp_path):
    _, folder = _export(tmp_path, mlp_ratio=3.0)
    target = LinearDiT(LinearDiTConfig.from_preset("tiny"))
    with pytest.raises(ShapeMismatchError, match="cannot pad"):
        init_from_weights(target, folder, pad_ffn=True)


def test_missing_source_is_a_clear_error(tmp_path):
    target = LinearDiT(LinearDiTConfig.from_preset("tiny"))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        init_from_weights(target, tmp_path / "nowhere")
