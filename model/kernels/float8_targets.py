"""Which of the Linear DiT's matmuls go float8, and how they are swapped in and out.

The large GEMMs (each block's attention projections and the Mix-FFN's two 1×1 convs) go float8; the temporal
conv taps, the depthwise conv, the embeddings and the output layer stay in the weights' precision. Inference
(`model.kernels.fp8_torchao`, `--precision fp8`) swaps torchao's float8 modules in for the duration of a `with`
block; float8 training (`training.worker.float8`) converts the same set. The model's parameters are never
changed, so its state_dict is untouched.

(A hand-written float8 path, `torch._scaled_mm` with activations quantised in separate kernels, was measured
against torchao on an H100 on 2026-12-08 and was slower, 24.55 s against 23.34 s for the 50-step CFG loop; it
was removed. docs/benchmarks.md has the run.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


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
