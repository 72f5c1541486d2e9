"""Fused GPU kernels of the Linear DiT (Triton), and the switch between them and the PyTorch path.

The backend is chosen by `set_attention_backend` or the environment variable `SVP_ATTENTION_BACKEND`:
- `auto` (default): the fused Triton kernels on CUDA tensors (bf16 or fp32) when triton imports, the PyTorch
  path everywhere else (the CPU CI tests that one). With gradients, the fused forward + backward
  (`linear_attention_training`) when the caller allows it (`LinearDiTConfig.fused_attention_backward`) and
  no past state is involved;
- `torch`: always the PyTorch path;
- `fused`: always the kernels; an error where they cannot run (no triton, CPU tensors unless
  `TRITON_INTERPRET=1`, a dtype other than bf16/fp32, or gradients the fused backward may not take).
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "torch", "fused")
_backend = os.environ.get("SVP_ATTENTION_BACKEND", "auto")
_TRITON = importlib.util.find_spec("triton") is not None
_DTYPES = (torch.bfloat16, torch.float32)


def set_attention_backend(name: str) -> None:
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    _backend = name


def attention_backend() -> str:
    return _backend


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _why_not_fused(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backward: bool = False, cached: bool = False
) -> str | None:
    if not _TRITON:
        return "triton is not installed"
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return f"tensors are on {q.device.type}, not CUDA"
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype} (the kernel takes bf16 or fp32)"
    if needs_grad(q, k, v):
        if not backward:
            return "gradients are needed and the fused backward is off"
        if cached:
            return "gradients through a cache state (the fused backward starts from zero)"
    return None


def use_fused(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backward: bool = False, cached: bool = False
) -> bool:
    """Whether the linear-attention core of these inputs runs the fused kernels under the current backend;
    `backward`: the caller allows the fused backward when gradients are needed; `cached`: a past state."""
    if _backend == "torch":
        return False
    reason = _why_not_fused(q, k, v, backward, cached)
    if reason is not None and _backend == "fused":
        raise RuntimeError(f"attention backend 'fused' cannot run here: {reason}")
    return reason is None


def describe_path(device: torch.device | str, dtype: torch.dtype) -> str:
    """One line saying which linear-attention path inference on this device and dtype takes."""
    probe = torch.empty(0, device=device, dtype=dtype)
    if _backend == "torch":
        return "linear attention: PyTorch path (backend 'torch')"
    reason = _why_not_fused(probe, probe, probe)
    if reason is None:
        return "linear attention: fused Triton kernel"
    return f"linear attention: PyTorch path ({reason})"
