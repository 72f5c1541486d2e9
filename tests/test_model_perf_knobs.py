"""The speed knobs of `LinearDiTConfig` (checkpoint_fraction, compile_blocks, compile_memory_budget): validated,
saved with the config, and without effect on the math of a CPU run."""

from __future__ import annotations

import json

import pytest
import torch

import model.linear_dit as linear_dit
from model import LinearDiT, LinearDiTConfig


@pytest.mark.parametrize("field", ["checkpoint_fraction", "compile_memory_budget"])
@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_fractions_outside_0_1_are_rejected(field, value):
    with pytest.raises(ValueError, match=f"{field} must be in \\[0, 1\\], got {value}"):
        LinearDiTConfig.from_preset("tiny", **{field: value})


def test_knobs_survive_a_config_round_trip():
    config = LinearDiTConfig.from_preset(
        "tiny", checkpoint_fraction=0.25, compile_blocks=True, compile_memory_budget=0.3
    )
    assert LinearDiTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_compile_blocks_leaves_a_cpu_run_eager_and_identical():
    torch.manual_seed(0)
    plain = LinearDiT(LinearDiTConfig.from_preset("tiny", gradient_checkpointing=True))
    fast = LinearDiT(
        LinearDiTConfig.from_preset(
            "tiny", gradient_checkpointing=True, checkpoint_fraction=0.5, compile_blocks=True
        )
    )
    fast.load_state_dict(plain.state_dict())
    latents, text = torch.randn(1, 48, 3, 8, 8), torch.randn(1, 5, 64)
    before = len(linear_dit._COMPILED)
    outputs = [m(latents, text, torch.tensor([300.0])) for m in (plain, fast)]
    assert len(linear_dit._COMPILED) == before
    assert torch.equal(outputs[0], outputs[1])
