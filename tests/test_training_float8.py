"""Float8 training through torchao (`deepspeed.float8`) on the CPU: the tiny preset's stage converts the
blocks' large matmuls (torchao's emulation on CPU workers), keeps the embedders and the output projection,
leaves the state_dict layout as it was, and trains with a real DeepSpeed engine close to the fp32 run."""

from __future__ import annotations

import pytest
import torch
from test_training_step import _batch, single_process_group  # noqa: F401 (a fixture)

from core.errors import UserError
from model import LinearDiT
from training.config import load_preset
from training.config.schema import DeepSpeedSpec
from training.worker.step import StageStep, build_engine, guarded_step, step_generator

pytest.importorskip("torchao", reason="torchao is the fp8 extra (pip install -e '.[fp8]')")


def _stage(tmp_path, **float8):
    stage = load_preset("tiny", variables={"data_root": str(tmp_path)}).stage("image")
    spec = {**stage.deepspeed.model_dump(), "float8": {"enabled": True, **float8}}
    return stage.replace(deepspeed=DeepSpeedSpec.model_validate(spec))


def test_float8_option_is_validated():
    assert DeepSpeedSpec().float8.enabled is False
    spec = DeepSpeedSpec.model_validate({"float8": {"enabled": True, "recipe": "tensorwise", "min_dim": 64}})
    assert spec.float8.recipe == "tensorwise" and spec.float8.min_dim == 64
    with pytest.raises(ValueError, match="recipe"):
        DeepSpeedSpec.model_validate({"float8": {"enabled": True, "recipe": "blockwise"}})
    with pytest.raises(ValueError, match="scale"):
        DeepSpeedSpec.model_validate({"float8": {"scale": 2}})


def test_token_gemms_of_any_length_are_padded_for_the_gpu():
    """The weight gradient's GEMM runs over tokens; torch._scaled_mm wants its inner dimension a multiple of
    16 and 81 frames at 480p are 32,760 tokens a sample (the H100 run of 2026-12-08 stopped there). The CPU's
    emulation has no such rule, so what is checked here is that torchao pads them, in both recipes."""
    from training.worker.float8 import float8_config

    for recipe in ("rowwise", "tensorwise"):
        gpu = float8_config(recipe, use_gpu=True)
        assert gpu.pad_inner_dim and not gpu.emulate
        assert float8_config(recipe, use_gpu=False).emulate


def test_min_dim_keeps_small_gemms_out(tmp_path):
    from training.worker.float8 import convert_to_float8

    stage = _stage(tmp_path)  # min_dim 256: every GEMM of the tiny model (width 64) is small
    model = LinearDiT(stage.model_config())
    assert convert_to_float8(model, stage.deepspeed.float8, use_gpu=False) == 0
    assert type(model.blocks[0].attn1.to_q) is torch.nn.Linear


def test_sampling_in_float8_inference_gives_the_training_hooks_back(tmp_path):
    """A float8-trained model renders its sample through an inference precision; training resumes in float8."""
    from model.kernels.precision import precision_context
    from training.worker.float8 import Float8Pointwise, convert_to_float8

    stage = _stage(tmp_path, min_dim=16)
    model = LinearDiT(stage.model_config()).eval()
    assert (
        convert_to_float8(model, stage.deepspeed.float8, use_gpu=False) == 10 * stage.model_config().depth
    )  # 8 projections, 2 convs
    hook = model.blocks[0].ff.conv_inverted.float8
    latents, text, t = torch.randn(1, 48, 1, 8, 8), torch.randn(1, 5, 64), torch.tensor([300.0])
    with torch.no_grad(), precision_context(model, "fp8"):
        assert not isinstance(model.blocks[0].ff.conv_inverted.float8, Float8Pointwise)
        model(latents, text, t)
    assert model.blocks[0].ff.conv_inverted.float8 is hook


@pytest.mark.parametrize("recipe", ["rowwise", "tensorwise"])
def test_tiny_stage_trains_in_float8(single_process_group, tmp_path, recipe):  # noqa: F811
    from torchao.float8.float8_linear import Float8Linear

    from training.worker.float8 import Float8Pointwise

    stage = _stage(tmp_path, recipe=recipe, min_dim=16)
    video = torch.rand(4, 3, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    losses = {}
    for name, run in (("fp32", stage.replace(deepspeed=DeepSpeedSpec())), ("float8", stage)):
        torch.manual_seed(0)
        model = LinearDiT(stage.model_config())
        keys = {k: v.shape for k, v in model.state_dict().items()}
        engine = build_engine(run, model, world_size=1, use_gpu=False, universal=False)
        step_math = StageStep(run, torch.device("cpu"), torch.float32)
        losses[name] = []
        for step in range(4):  # WarmupLR: lr 0 for two steps, then the weights move
            totals, applied = guarded_step(
                engine, step_math, _batch(video, ["a red square"] * 4), step_generator(0, 0, step)
            )
            assert applied
            losses[name].append(totals.loss)
        assert {k: v.shape for k, v in engine.module.state_dict().items()} == keys  # the checkpoint layout
    block = engine.module.blocks[0]
    for attention in (block.attn1, block.attn2):
        assert all(
            isinstance(getattr(attention, n), Float8Linear) for n in ("to_q", "to_k", "to_v", "to_out")
        )
    assert isinstance(block.ff.conv_inverted.float8, Float8Pointwise)
    assert isinstance(block.ff.conv_point.float8, Float8Pointwise)
    assert type(engine.module.proj_out) is torch.nn.Linear  # first/last layers stay high precision
    assert not any(isinstance(m, Float8Linear) for m in engine.module.caption_projection.modules())
    gap = [abs(a - b) / b for a, b in zip(losses["float8"], losses["fp32"], strict=True)]
    print(f"{recipe}: fp32 losses {losses['fp32']}, float8 losses {losses['float8']}")
    assert losses["float8"] != losses["fp32"] and max(gap) < 0.05


def test_float8_on_a_gpu_without_float8_tensor_cores_is_a_user_error(tmp_path):
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() >= (8, 9):
        pytest.skip("needs a CUDA GPU below compute capability 8.9")
    from training.worker.float8 import convert_to_float8

    stage = _stage(tmp_path)
    with pytest.raises(UserError, match="compute capability 8.9"):
        convert_to_float8(LinearDiT(stage.model_config()), stage.deepspeed.float8, use_gpu=True)
