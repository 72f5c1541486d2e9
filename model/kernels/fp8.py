"""FP8 inference for the Linear DiT's large matmuls (Hopper's counterpart of SANA-Video's NVFP4 on Blackwell).

`float8_inference(model)` swaps, for the duration of a `with` block, every block's attention projections
(`nn.Linear`) and the Mix-FFN's two 1×1 convs for float8 (e4m3) versions: weights quantised once per output
channel, activations per token at run time, one `torch._scaled_mm` with both row-wise scales and bf16 output
(PyTorch's scaled matmul; Hopper tensor cores at twice the bf16 rate). The temporal conv taps, the depthwise
conv, the embeddings and the output layer stay bf16. Leaving the block restores the bf16 modules; the model's
parameters are never changed, so its state_dict is untouched.

`--precision fp8` runs torchao's float8 (`model.kernels.fp8_torchao`) through the same swap; this module is
`--precision fp8-scaled-mm`, kept to measure against it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max


def _quantise_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> row-major float8 (M, K) (what the scaled matmul takes, whatever x's strides) and fp32 scales
    (M, 1) with x ≈ q·scale, each row's amax mapped to E4M3_MAX."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).to(E4M3).contiguous(), scale


def _scaled_matmul(a, b_t, scale_a, scale_b, bias, out_dtype) -> torch.Tensor:
    """a @ b_t with row-wise scales: `torch._scaled_mm` on CUDA; elsewhere (CPU builds before torch 2.14
    take only per-tensor scales) the same products of the dequantised values."""
    if a.is_cuda:
        return torch._scaled_mm(a, b_t, scale_a=scale_a, scale_b=scale_b, bias=bias, out_dtype=out_dtype)
    out = (a.float() * scale_a) @ (b_t.float() * scale_b)
    return (out if bias is None else out + bias.float()).to(out_dtype)


class Float8Linear(nn.Module):
    """y = x·Wᵀ + b with W and x in float8 e4m3 (row-wise scales), output in x's dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        weight_fp8, scale = _quantise_rows(weight.detach().flatten(1))
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        x_fp8, x_scale = _quantise_rows(rows)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        out = _scaled_matmul(x_fp8, self.weight_fp8.t(), x_scale, self.weight_scale, bias, x.dtype)
        return out.view(*x.shape[:-1], out.shape[-1])


def float8_targets(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, module) of every matmul that goes float8: each block's attention projections and
    the Mix-FFN's two 1×1 convs (the large GEMMs; embeddings, output layer and small convs stay high precision).
    The torchao inference path and float8 training (`training.worker.float8`) convert the same set."""
    for block in model.blocks:
        for attention in (block.attn1, block.attn2):
            for name in ("to_q", "to_k", "to_v", "to_out"):
                yield attention, name, getattr(attention, name)
        for name in ("conv_inverted", "conv_point"):
            yield block.ff, name, getattr(block.ff, name)


# Attribute of a 1×1 conv that `model.ffn` calls instead of its weight's matmul while set.
POINTWISE_HOOK = "float8"


@contextlib.contextmanager
def swapped_float8(
    model: nn.Module, make: Callable[[torch.Tensor, torch.Tensor | None], nn.Module]
) -> Iterator[nn.Module]:
    """Run `model` (a LinearDiT) with `make(weight, bias)`'s float8 modules in place of `float8_targets`
    inside the block; the original modules come back after, so the parameters and state_dict never change.

    An nn.Linear is replaced; a 1×1 conv keeps its module (the FFN reads its weight) and gets the float8
    module as its `POINTWISE_HOOK` attribute (the previous value, e.g. float8 training's, comes back after).
    """
    swapped: list[tuple[nn.Module, str, nn.Module, object]] = []
    try:
        for parent, name, module in list(float8_targets(model)):
            fp8 = make(module.weight.detach().flatten(1), module.bias)
            if isinstance(module, nn.Conv2d):
                swapped.append((parent, name, module, module.__dict__.get(POINTWISE_HOOK)))
                module.__dict__.pop(POINTWISE_HOOK, None)
                setattr(module, POINTWISE_HOOK, fp8)
            else:
                swapped.append((parent, name, module, None))
                setattr(parent, name, fp8)
        yield model
    finally:
        for parent, name, module, previous in swapped:
            if isinstance(module, nn.Conv2d):
                delattr(module, POINTWISE_HOOK)
                if previous is not None:
                    setattr(module, POINTWISE_HOOK, previous)
            else:
                setattr(parent, name, module)


def float8_inference(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Run `model` with the hand-written float8 matmuls (`Float8Linear`) inside the `with` block
    (`--precision fp8-scaled-mm`)."""
    return swapped_float8(model, Float8Linear)
