"""Float8 training through torchao (a stage's `deepspeed.float8`), applied to the model before DeepSpeed
wraps it.

The matmuls converted are the ones float8 inference converts (`model.kernels.float8_targets`: each
block's attention projections and the Mix-FFN's two 1×1 convs), minus GEMMs with a dimension below
`min_dim` or not a multiple of 16 (float8 would cost more than it saves there, or cannot run). The patch
embedding, conditioning embedders and output projection are not among them and stay in the stage's precision.

- nn.Linear -> torchao's `Float8Linear` (`convert_to_float8_training`): same parameters, so checkpoints,
  ZeRO partitioning, EMA and the exported state_dict are unchanged;
- a 1×1 conv keeps its module and parameter (the checkpoint layout) and gets a float8 matmul as its
  `POINTWISE_HOOK`: torchao's float8 autograd matmul on the conv's weight viewed as (out, in). The hook is
  a plain object, not a submodule, so it adds nothing to the state_dict.

GPU workers need float8 tensor cores (compute capability 8.9+); CPU workers run torchao's emulation
(`Float8LinearConfig(emulate=True)`: the same casts and scales, the matmul in high precision), which is
what the CPU tests run.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from core.errors import UserError
from model.kernels.float8_targets import POINTWISE_HOOK, float8_targets
from model.kernels.fp8_torchao import float8_supported, require_torchao

if TYPE_CHECKING:
    from torchao.float8 import Float8LinearConfig

    from training.config.schema import Float8TrainingSpec

log = logging.getLogger(__name__)


class Float8Pointwise:
    """A 1×1 conv's matmul over tokens in float8 (forward and backward), on the conv's own weight."""

    def __init__(self, conv: nn.Conv2d, config: Float8LinearConfig) -> None:
        from torchao.float8.float8_linear import Float8Linear

        self.conv = conv
        self.config = config
        out_features, in_features = conv.weight.shape[:2]
        # Float8Linear's own per-GEMM settings (emulation, fast accumulation), built as it builds them.
        shell = Float8Linear(in_features, out_features, bias=False, config=config, device="meta")
        self.mm_config = shell.linear_mm_config

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from torchao.float8.float8_linear import matmul_with_hp_or_float8_args

        weight = self.conv.weight.flatten(1)
        out = matmul_with_hp_or_float8_args.apply(x.contiguous(), weight.t(), self.mm_config, self.config)
        return out if self.conv.bias is None else out + self.conv.bias.to(out.dtype)


def _contiguous_input(_module: nn.Module, args: tuple) -> tuple:
    # torchao 0.18's row-wise cast cannot reshape a non-contiguous input ("aten.clone.default with axiswise
    # scaling is not supported"); tokens can arrive as a transposed view (the patch embedding's layout).
    return (args[0].contiguous(), *args[1:])


def _large(module: nn.Module, min_dim: int) -> bool:
    out_features, in_features = module.weight.shape[:2]
    return all(d % 16 == 0 and d >= min_dim for d in (out_features, in_features))


def float8_config(recipe: str, use_gpu: bool) -> Float8LinearConfig:
    from torchao.float8 import Float8LinearConfig

    # pad_inner_dim: the weight gradient's GEMM runs over tokens, and torch._scaled_mm needs its inner dimension
    # a multiple of 16; 81 frames at 480p are 32,760 tokens a sample (the H100 run of 2026-12-08 stopped on
    # it). torchao pads both operands with zeros there, which adds nothing to the sums.
    config = Float8LinearConfig.from_recipe_name(recipe)
    return dataclasses.replace(config, emulate=not use_gpu, pad_inner_dim=True)


def convert_to_float8(model: nn.Module, spec: Float8TrainingSpec, use_gpu: bool) -> int:
    """Convert `model` (a LinearDiT, before DeepSpeed) in place; returns how many matmuls went float8."""
    require_torchao("deepspeed.float8")
    from torchao.float8 import convert_to_float8_training

    if use_gpu and not float8_supported(torch.device("cuda", torch.cuda.current_device())):
        raise UserError(
            "deepspeed.float8 needs GPUs with float8 tensor cores (compute capability 8.9+, e.g. L4, H100)"
        )
    config = float8_config(spec.recipe, use_gpu)
    chosen = [(parent, name, m) for parent, name, m in float8_targets(model) if _large(m, spec.min_dim)]
    linears = {id(m) for _, _, m in chosen if isinstance(m, nn.Linear)}
    convert_to_float8_training(model, module_filter_fn=lambda m, _fqn: id(m) in linears, config=config)
    for parent, name, module in chosen:
        if isinstance(module, nn.Conv2d):
            setattr(module, POINTWISE_HOOK, Float8Pointwise(module, config))
        else:
            getattr(parent, name).register_forward_pre_hook(_contiguous_input)
    log.info(
        "float8 training (torchao, %s%s): %d of %d block matmuls",
        spec.recipe,
        "" if use_gpu else ", emulated on CPU",
        len(chosen),
        sum(1 for _ in float8_targets(model)),
    )
    return len(chosen)
