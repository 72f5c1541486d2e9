"""The matmul precisions generation runs in (`--precision`), and the context each one needs.

- `native`: the weights' dtype;
- `fp8`: torchao's float8 (dynamic row-wise activations × row-wise weights; `model.kernels.fp8_torchao`).
"""

from __future__ import annotations

import contextlib

from torch import nn

from core.errors import UserError

PRECISIONS = ("native", "fp8")


def precision_context(model: nn.Module, precision: str) -> contextlib.AbstractContextManager:
    """The context a LinearDiT runs in for `precision` (the model is as it was after it)."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp8":
        from model.kernels.fp8_torchao import torchao_float8_inference

        return torchao_float8_inference(model)
    return contextlib.nullcontext()
