"""Per-step training metrics: throughput, MFU and data-wait share, aggregated over ranks in one all-reduce.

MFU = model FLOPs per step (3 × forward FLOPs from `model.info.forward_flops`: forward + backward, without
the recompute of activation checkpointing, as usual for MFU) ÷ step time ÷ (peak FLOP/s per worker × workers).

Peak FLOP/s per worker: `SVP_PEAK_TFLOPS` when set; else the dense bf16 (or tf32 for fp32 training) peak of
known GPUs; on a CPU a stated nominal 0.1 TFLOP/s per worker, so the CPU figure is comparable between runs
but is not a hardware utilisation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

CPU_NOMINAL_PEAK_FLOPS = 1e11
# Dense peak TFLOP/s (bf16, tf32) from the vendors' spec sheets (SXM parts).
GPU_PEAK_TFLOPS = {
    "H200": (989.0, 494.0),
    "H100": (989.0, 494.0),
    "A100": (312.0, 156.0),
    "L40S": (362.0, 183.0),
}


def peak_flops(device: torch.device, bf16: bool) -> float | None:
    """Peak FLOP/s of one worker's device (see the module docstring); None for an unknown GPU."""
    override = os.environ.get("SVP_PEAK_TFLOPS")
    if override:
        return float(override) * 1e12
    if device.type != "cuda":
        return CPU_NOMINAL_PEAK_FLOPS
    name = torch.cuda.get_device_name(device)
    for key, (bf16_peak, tf32_peak) in GPU_PEAK_TFLOPS.items():
        if key in name:
            return (bf16_peak if bf16 else tf32_peak) * 1e12
    return None


@dataclass
class StepTotals:
    """One rank's numbers for one step; summed over ranks by `all_reduce`."""

    loss: float
    nonfinite: float
    samples: float
    tokens: float
    flops: float
    data_wait_s: float

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(
            [self.loss, self.nonfinite, self.samples, self.tokens, self.flops, self.data_wait_s],
            dtype=torch.float64,
        )

    @classmethod
    def all_reduce(cls, local: StepTotals, device: torch.device) -> StepTotals:
        import torch.distributed as dist

        values = local.to_tensor().to(device)
        if dist.is_initialized():
            dist.all_reduce(values)
        return cls(*values.cpu().tolist())


def step_metrics(
    totals: StepTotals,
    world_size: int,
    step_time_s: float,
    lr: float,
    grad_norm: float | None,
    peak: float | None,
) -> dict[str, float]:
    """The logged metrics of one step, from the summed totals."""
    out = {
        "train/loss": totals.loss / world_size,
        "train/lr": lr,
        "perf/samples_per_s": totals.samples / step_time_s,
        "perf/tokens_per_s": totals.tokens / step_time_s,
        "perf/step_time_s": step_time_s,
        "data/wait_share": min(1.0, totals.data_wait_s / world_size / step_time_s),
    }
    if grad_norm is not None:
        out["train/grad_norm"] = float(grad_norm)
    if peak:
        out["perf/mfu"] = totals.flops / step_time_s / (peak * world_size)
    return out
