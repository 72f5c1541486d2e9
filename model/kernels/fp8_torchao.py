"""Float8 inference through torchao (`--precision fp8`): dynamic row-wise float8 activations × row-wise float8
weights (`Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`) on the attention projections and
the Mix-FFN's 1×1 convs (as nn.Linear over tokens: the same matmul), the modules that
`model.kernels.float8_targets` lists.

torchao's weight tensor subclass composes with torch.compile, so the activation quantisation fuses into the
neighbouring kernels instead of running as separate passes. `quantize_` runs only where torchao's float8 GEMMs
do (CUDA compute capability ≥ 8.9); on the CPU (the test path) the same tensor subclass is built directly and
its matmul is `torch._scaled_mm`'s CPU kernel (row-wise scales since torch 2.14). An older GPU is a user error:
emulating float8 there would only be slower than bf16.
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch
from torch import nn

from core.errors import UserError
from model.kernels.float8_targets import swapped_float8


def require_torchao(what: str) -> None:
    """A user error naming the extra when torchao is not installed."""
    if importlib.util.find_spec("torchao") is None:
        raise UserError(f"{what} runs through torchao, which is not installed: pip install 'svp[fp8]'")


def _config():
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    # set_inductor_config=False: torchao's recommended inductor settings (coordinate-descent tuning) are
    # process-wide and would change how every later compile behaves; the benchmark compares like with like.
    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)


def float8_supported(device: torch.device) -> bool:
    """Whether torchao's float8 matmuls run on `device` (the CPU: torch._scaled_mm's CPU kernel)."""
    if device.type == "cpu":
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def torchao_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """An nn.Linear holding `weight` (out, in) as torchao's float8 weight (row-wise), activations quantised
    row-wise at run time. The weight is quantised from bf16 (what torchao's row-wise path takes; float8 is
    coarser than either), the output keeps the activations' dtype."""
    from torchao.quantization import Float8Tensor, quantize_
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import QuantizeTensorToFloat8Kwargs

    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach().to(torch.bfloat16, copy=True), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    config = _config()
    if weight.is_cuda:
        quantize_(linear, config)
        return linear
    # CPU: the tensor `quantize_` builds, without its CUDA check (torchao's rule for which kernel runs is
    # the same: AUTO picks torch._scaled_mm off the GPU).
    act, wgt = config.granularity
    kwargs = QuantizeTensorToFloat8Kwargs(
        config.activation_dtype, act, kernel_preference=config.kernel_preference
    )
    quantized = Float8Tensor.from_hp(
        linear.weight.data,
        float8_dtype=config.weight_dtype,
        granularity=wgt,
        mm_config=config.mm_config,
        kernel_preference=config.kernel_preference,
        act_quant_kwargs=kwargs,
    )
    linear.weight = nn.Parameter(quantized, requires_grad=False)
    return linear


def torchao_float8_inference(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Run `model` (a LinearDiT) with torchao's float8 matmuls inside the `with` block; the bf16
    modules come back after (the parameters and state_dict never change)."""
    require_torchao("--precision fp8")
    param = next(model.parameters())
    if not float8_supported(param.device):
        raise UserError(
            f"--precision fp8 needs a GPU with float8 tensor cores (compute capability 8.9+, e.g. L4, H100); "
            f"{torch.cuda.get_device_name(param.device)} has none: use --precision native"
        )
    return swapped_float8(model, torchao_linear)
