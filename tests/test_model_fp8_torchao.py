"""`--precision fp8` through torchao on the CPU: the right modules go float8 (torchao's weight subclass),
the velocity stays close to bf16's, and the model is as it was afterwards. torchao's `quantize_` itself runs
only on CUDA sm89+ (tested by the GPU benchmark, benchmarks/fp8_compare.py); on the CPU the same weight
subclass runs torch._scaled_mm's CPU kernel."""

from __future__ import annotations

import pytest
import torch
from model_test_support import tiny_model

from model import LinearDiT

pytest.importorskip("torchao", reason="torchao is the fp8 extra (pip install -e '.[fp8]')")


def _bf16_model() -> LinearDiT:
    return tiny_model().to(torch.bfloat16)


def test_torchao_fp8_converts_the_large_matmuls_and_restores_the_model():
    from torchao.quantization import Float8Tensor

    from model.kernels.precision import precision_context

    model = _bf16_model()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    latents = torch.randn(1, 48, 3, 8, 8, dtype=torch.bfloat16)
    text, t = torch.randn(1, 5, 64, dtype=torch.bfloat16), torch.tensor([300.0])
    with torch.no_grad():
        reference = model(latents, text, t)
        with precision_context(model, "fp8"):
            block = model.blocks[0]
            for attention in (block.attn1, block.attn2):
                for name in ("to_q", "to_k", "to_v", "to_out"):
                    assert isinstance(getattr(attention, name).weight, Float8Tensor), name
            for name in ("conv_inverted", "conv_point"):
                assert isinstance(getattr(block.ff, name).float8.weight, Float8Tensor), name
            assert not isinstance(model.proj_out.weight, Float8Tensor)  # the output layer stays bf16
            fp8 = model(latents, text, t)
        after = model(latents, text, t)
    rel = ((fp8.float() - reference.float()).norm() / reference.float().norm()).item()
    print(f"tiny model, one velocity: rel-L2 fp8 (torchao) vs bf16 = {rel:.4f}")
    assert 1e-3 < rel < 0.1  # float8 rounding: visibly different, still close
    assert torch.equal(after, reference)
    assert type(model.blocks[0].attn1.to_q.weight) is torch.nn.Parameter
    assert not hasattr(model.blocks[0].ff.conv_inverted, "float8")
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())
