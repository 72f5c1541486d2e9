"""Parity with diffusers' SanaVideoTransformer3DModel and the official SANA-Video checkpoint layout."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import SanaVideoTransformer3DModel
from model_test_support import one_thread  # noqa: F401  (fixture)
from safetensors.torch import load_file

from model.config import LinearDiTConfig
from model.convert import (
    from_diffusers,
    from_official_state_dict,
    load_official,
    official_state_dict,
    save_official,
    to_diffusers,
)

# Tiny tensors: one intra-op thread avoids synchronisation costs on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")

# The tiny config diffusers' own tests use (head_dim 12: RoPE t/h/w = 4/4/4 channels).
TINY_DIFFUSERS = {
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "num_layers": 2,
    "num_cross_attention_heads": 2,
    "cross_attention_head_dim": 12,
    "cross_attention_dim": 24,
    "caption_channels": 16,
    "mlp_ratio": 2.5,
    "patch_size": (1, 2, 2),
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def diffusers_model() -> SanaVideoTransformer3DModel:
    torch.manual_seed(0)
    module = SanaVideoTransformer3DModel(**TINY_DIFFUSERS).eval()
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("scale_shift_table"):
                param.normal_(0.0, 0.5)  # may init to zeros in some versions: randomise explicitly
            elif ".norm_" in name or name.startswith("caption_norm"):
                param.uniform_(0.5, 1.5)
    assert all(block.ff.conv_temp.weight.abs().sum() > 0 for block in module.transformer_blocks)
    return module


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 16, 4, 8, 8, generator=generator)
    text = torch.randn(2, 12, 16, generator=generator)
    mask = torch.ones(2, 12)
    mask[1, 5:] = 0
    return latents, text, mask


def test_diffusers_parity_with_text_mask(diffusers_model, inputs):
    latents, text, mask = inputs
    ours = from_diffusers(diffusers_model).eval()
    timesteps = torch.tensor([312.0, 871.4])
    with torch.no_grad():
        expected = diffusers_model(latents, text, timesteps, encoder_attention_mask=mask).sample
        got = ours(latents, text, timesteps, mask)
        unmasked = ours(latents, text, timesteps)
    assert got.shape == expected.shape == latents.shape
    assert _rel(got, expected) < 1e-5
    assert _rel(unmasked, expected) > 1e-3  # the mask matters, so the test would see it ignored


def test_diffusers_parity_per_frame_timesteps(diffusers_model, inputs):
    latents, text, mask = inputs
    ours = from_diffusers(diffusers_model).eval()
    per_frame = torch.tensor([[0.0, 250.0, 500.0, 999.0], [10.0, 10.0, 700.0, 700.0]])
    # diffusers takes one timestep per token: (B, 1, F', H', W').
    per_token = per_frame[:, None, :, None, None].expand(2, 1, 4, 4, 4)
    with torch.no_grad():
        expected = diffusers_model(latents, text, per_token, encoder_attention_mask=mask).sample
        got = ours(latents, text, per_frame, mask)
    assert _rel(got, expected) < 1e-5


def test_diffusers_round_trip_is_exact(diffusers_model, inputs):
    ours = from_diffusers(diffusers_model)
    back = from_diffusers(to_diffusers(ours))
    assert back.config == ours.config
    reference = ours.state_dict()
    assert set(back.state_dict()) == set(reference)
    for key, tensor in back.state_dict().items():
        assert torch.equal(tensor, reference[key]), key
    exported = to_diffusers(ours)
    for key, tensor in diffusers_model.state_dict().items():
        assert torch.equal(exported.state_dict()[key], tensor), key
    latents, text, mask = inputs
    t = torch.tensor([5.0, 6.0])
    with torch.no_grad():
        expected = ours.eval()(latents, text, t, mask)
        assert _rel(exported(latents, text, t, encoder_attention_mask=mask).sample, expected) < 1e-5


def test_from_diffusers_rejects_unsupported_configs():
    with torch.device("meta"):
        module = SanaVideoTransformer3DModel(**{**TINY_DIFFUSERS, "guidance_embeds": True})
    with pytest.raises(ValueError, match="guidance_embeds=True is not supported"):
        from_diffusers(module)


def _official_keys(depth: int) -> set[str]:
    """The official `SanaMSVideo` key set, as listed in the reference notes' key map."""
    keys = {
        "x_embedder.proj.weight",
        "x_embedder.proj.bias",
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.0.bias",
        "t_embedder.mlp.2.weight",
        "t_embedder.mlp.2.bias",
        "t_block.1.weight",
        "t_block.1.bias",
        "y_embedder.y_proj.fc1.weight",
        "y_embedder.y_proj.fc1.bias",
        "y_embedder.y_proj.fc2.weight",
        "y_embedder.y_proj.fc2.bias",
        "attention_y_norm.weight",
        "final_layer.linear.weight",
        "final_layer.linear.bias",
        "final_layer.scale_shift_table",
    }
    per_block = [
        "scale_shift_table",
        "attn.qkv.weight",
        "attn.q_norm.weight",
        "attn.k_norm.weight",
        "attn.proj.weight",
        "attn.proj.bias",
        "cross_attn.q_linear.weight",
        "cross_attn.q_linear.bias",
        "cross_attn.kv_linear.weight",
        "cross_attn.kv_linear.bias",
        "cross_attn.q_norm.weight",
        "cross_attn.k_norm.weight",
        "cross_attn.proj.weight",
        "cross_attn.proj.bias",
        "mlp.inverted_conv.conv.weight",
        "mlp.inverted_conv.conv.bias",
        "mlp.depth_conv.conv.weight",
        "mlp.depth_conv.conv.bias",
        "mlp.point_conv.conv.weight",
        "mlp.t_conv.weight",
    ]
    return keys | {f"blocks.{i}.{name}" for i in range(depth) for name in per_block}


def test_official_layout_keys_and_round_trip(diffusers_model):
    ours = from_diffusers(diffusers_model)
    official = official_state_dict(ours)
    assert set(official) == _official_keys(depth=2)
    # The official <-> diffusers correspondences of the reference notes' table, end to end.
    theirs = diffusers_model.state_dict()
    q, k, v = official["blocks.1.attn.qkv.weight"].chunk(3)
    assert torch.equal(q, theirs["transformer_blocks.1.attn1.to_q.weight"])
    assert torch.equal(k, theirs["transformer_blocks.1.attn1.to_k.weight"])
    assert torch.equal(v, theirs["transformer_blocks.1.attn1.to_v.weight"])
    kb, vb = official["blocks.0.cross_attn.kv_linear.bias"].chunk(2)
    assert torch.equal(kb, theirs["transformer_blocks.0.attn2.to_k.bias"])
    assert torch.equal(vb, theirs["transformer_blocks.0.attn2.to_v.bias"])
    pairs = {
        "t_block.1.weight": "time_embed.linear.weight",
        "t_embedder.mlp.2.bias": "time_embed.emb.timestep_embedder.linear_2.bias",
        "final_layer.scale_shift_table": "scale_shift_table",
        "blocks.0.mlp.t_conv.weight": "transformer_blocks.0.ff.conv_temp.weight",
        "blocks.1.cross_attn.proj.weight": "transformer_blocks.1.attn2.to_out.0.weight",
    }
    for official_key, diffusers_key in pairs.items():
        assert torch.equal(official[official_key], theirs[diffusers_key]), official_key

    back = from_official_state_dict(official, ours.config)
    for key, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key


@pytest.mark.parametrize(
    ("suffix", "wrapper"), [(".pth", "state_dict"), (".pth", "model"), (".safetensors", None)]
)
def test_official_files_load_and_drop_unused_keys(diffusers_model, tmp_path, caplog, suffix, wrapper):
    ours = from_diffusers(diffusers_model)
    path = tmp_path / f"SANA_Video_tiny{suffix}"
    save_official(ours, path)
    if suffix == ".pth":
        # A released checkpoint also carries the null caption, a position buffer and a logvar head.
        wrapped = torch.load(path, weights_only=True)
        state = wrapped["state_dict"]
        state["y_embedder.y_embedding"] = torch.zeros(300, 16)
        state["pos_embed"] = torch.zeros(1, 64, 24)
        state["logvar_linear.weight"] = torch.zeros(1, 24)
        state["logvar_linear.bias"] = torch.zeros(1)
        torch.save({wrapper: state, "step": 1000}, path)
    else:
        assert set(load_file(str(path))) == _official_keys(depth=2)
    with caplog.at_level(logging.INFO, logger="model.convert"):
        loaded = load_official(path, ours.config)
    if suffix == ".pth":
        assert "logvar_linear.weight" in caplog.text and "y_embedder.y_embedding" in caplog.text
    for key, tensor in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_official_load_errors_name_the_key_and_path(diffusers_model, tmp_path):
    ours = from_diffusers(diffusers_model)
    official = official_state_dict(ours)
    official["blocks.1.mlp.t_conv.weight"] = torch.zeros(24, 24, 5, 1)
    with pytest.raises(ValueError, match=r"blocks\.1\.ff\.conv_temp\.weight has shape \(24, 24, 5, 1\)"):
        from_official_state_dict(official, ours.config)
    official = official_state_dict(ours)
    official["blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected key blocks.0.extra.weight"):
        from_official_state_dict(official, ours.config)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_official(tmp_path / "nowhere.pth", LinearDiTConfig.from_preset("tiny"))


def test_a_sample_prediction_model_is_not_exported_as_a_velocity_model():
    from core.errors import UserError
    from model.linear_dit import LinearDiT

    model = LinearDiT(LinearDiTConfig.from_preset("tiny", prediction="sample"))
    for export in (to_diffusers, official_state_dict):
        with pytest.raises(UserError, match="predicts the velocity; this model predicts 'sample'"):
            export(model)
