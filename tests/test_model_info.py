"""Presets, exact parameter counts, token/cache/FLOP arithmetic and `svp model info`."""

from __future__ import annotations

import json

import pytest
import torch
from model_test_support import one_thread  # noqa: F401  (fixture)
from torch.utils.flop_counter import FlopCounterMode

from model import LinearDiT, LinearDiTConfig
from model.config import OFFICIAL_NUMERICS
from model.info import cache_bytes_per_layer, count_parameters, forward_flops, tokens_per_video
from orchestration.cli import main

# Tiny tensors: one intra-op thread avoids synchronisation costs on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("preset", "params"), [("sana-video-2b-480p", 2_056_862_144), ("sana-video-2b-720p", 2_057_148_928)]
)
def test_exact_parameter_counts(preset, params):
    assert count_parameters(LinearDiTConfig.from_preset(preset)) == params


def test_preset_shapes_and_config_round_trip():
    cfg = LinearDiTConfig.from_preset("sana-video-2b-480p")
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.head_dim, cfg.ffn_hidden_size) == (
        2240,
        20,
        20,
        112,
        6720,
    )
    assert cfg.rope_split == (40, 36, 36)
    assert (cfg.linear_attention_eps, cfg.cross_attention_qk_norm_eps, cfg.timestep_truncation) == (
        1e-15,
        1e-5,
        False,
    )
    official = LinearDiTConfig.from_preset("sana-video-2b-720p", **OFFICIAL_NUMERICS)
    assert (official.in_channels, official.patch_size, official.linear_attention_eps) == (
        128,
        (1, 1, 1),
        1e-8,
    )
    tiny = LinearDiTConfig.from_preset("tiny")
    assert tiny.in_channels == 3 * 4 * 4 and tiny.vae_stride == (1, 4, 4)
    assert LinearDiTConfig.from_dict(json.loads(json.dumps(official.to_dict()))) == official
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        LinearDiTConfig.from_preset("huge")
    with pytest.raises(ValueError, match="unknown LinearDiTConfig keys: hidden"):
        LinearDiTConfig.from_dict({"hidden": 3})


def test_tokens_and_cache_bytes():
    cfg480 = LinearDiTConfig.from_preset("sana-video-2b-480p")
    cfg720 = LinearDiTConfig.from_preset("sana-video-2b-720p")
    assert tokens_per_video(cfg480, 81, 480, 832) == 21 * 30 * 52 == 32_760
    assert tokens_per_video(cfg720, 81, 704, 1280) == 11 * 22 * 40 == 9_680
    # 20 heads x 112 x 112 + 20 x 112 fp32, plus one frame of 2240 channels x 30·52 tokens fp32.
    assert cache_bytes_per_layer(cfg480, 60, 104) == (20 * 112 * 113 + 2240 * 1560) * 4 == 14_990_080
    assert cache_bytes_per_layer(cfg480, 60, 104, batch=2, dtype=torch.bfloat16) == 2 * (
        20 * 112 * 113 * 4 + 2240 * 1560 * 2
    )
    with pytest.raises(ValueError, match="frames=80"):
        tokens_per_video(cfg480, 80, 480, 832)


def test_forward_flops_match_the_flop_counter():
    cfg = LinearDiTConfig.from_preset("tiny")
    model = LinearDiT(cfg)
    text_len, shape = 10, (48, 4, 16, 16)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, *shape), torch.randn(1, text_len, 64), torch.tensor([3.0]))
    # PyTorch's counter skips CPU scaled-dot-product attention: add its two (N x L x inner) matmuls.
    tokens = 4 * 8 * 8
    sdpa = cfg.depth * 2 * (2 * tokens * text_len * cfg.cross_attention_inner_dim)
    assert forward_flops(cfg, shape, text_len) == counter.get_total_flops() + sdpa


def test_svp_model_info_prints_parameters_and_cache(capsys):
    assert main(["model", "info", "sana-video-2b-480p"]) == 0
    out = capsys.readouterr().out
    assert "2,056,862,144" in out
    assert "14,990,080" in out and "32,760" in out
    assert main(["model", "info", "tiny", "--frames", "33", "--height", "64", "--width", "65"]) == 2
    assert "svp: error: height×width 64x65" in capsys.readouterr().err
