"""Training metrics: loss, throughput, MFU and data-wait share, summed over ranks in one all-reduce per step and
over the steps of a log window on the device, read by the host every `log_every` steps (`StepWindow`).

MFU = model FLOPs per step (3 × forward FLOPs from `model.info.forward_flops`: forward + backward, without
the recompute of activation checkpointing, as usual for MFU) ÷ step time ÷ (peak FLOP/s per worker × workers).

Peak FLOP/s per worker: `SVP_PEAK_TFLOPS` when set; else the dense bf16 (or tf32 for fp32 training) peak of
known GPUs; on a CPU a stated nominal 0.1 TFLOP/s per worker, so the CPU figure is comparable between runs
but is not a hardware utilisation.
"""

from __future__ import annotations

import os
import time

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


FIELDS = ("loss", "nonfinite", "samples", "tokens", "flops", "data_wait_s")


class StepTotals:
    """One step's numbers as one float64 tensor on the step's device (`FIELDS`, in order).

    Kept on the device so that neither the per-rank values nor their sum over ranks (`all_reduce`) is read by
    the host during the step: `StepWindow` adds them up and reads them every `log_every` steps. Each field is
    a 0-d tensor (`totals.loss`), or a float after `read()`.
    """

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values

    def __getattr__(self, name: str):
        if name in FIELDS:
            return self.values[FIELDS.index(name)]
        raise AttributeError(name)

    @classmethod
    def local(
        cls, loss: torch.Tensor, samples: int, tokens: float, flops: float, data_wait_s: float
    ) -> StepTotals:
        """This rank's step; a non-finite loss counts as `nonfinite` 1 and loss 0 (decided on the device)."""
        loss = loss.detach().to(torch.float64).reshape(())
        finite = torch.isfinite(loss)
        host = torch.tensor([samples, tokens, flops, data_wait_s], dtype=torch.float64)
        if loss.device.type == "cuda":  # pinned + non_blocking: the copy does not wait for the queued kernels
            host = host.pin_memory()
        counts = host.to(loss.device, non_blocking=True)
        flags = torch.stack([torch.where(finite, loss, torch.zeros_like(loss)), (~finite).to(torch.float64)])
        return cls(torch.cat([flags, counts]))

    @classmethod
    def all_reduce(cls, local: StepTotals, device: torch.device) -> StepTotals:
        """The sum over ranks, still on the device (an asynchronous collective: no host read)."""
        import torch.distributed as dist

        values = local.values.to(device)
        if dist.is_initialized():
            dist.all_reduce(values)
        return cls(values)

    def read(self) -> dict[str, float]:
        """The values on the host (one device-to-host copy: a sync, so only at log steps)."""
        return dict(zip(FIELDS, self.values.cpu().tolist(), strict=True))


class StepWindow:
    """The steps since the last log, summed on the device; `read()` syncs once and starts a new window.

    Besides the totals it sums the loss of applied steps only, so a skipped (NaN/inf) step does not pull the
    window's mean loss down.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.sums = torch.zeros(len(FIELDS) + 1, dtype=torch.float64, device=self.device)
        self.steps = 0
        self.started = time.perf_counter()

    def start_step(self) -> None:
        """Call as a step begins: the window's clock starts with its first step (not at the last read, so
        checkpoints and samples between windows are not counted as step time)."""
        if self.steps == 0:
            self.started = time.perf_counter()

    def add(self, totals: StepTotals) -> None:
        applied = (totals.nonfinite == 0).to(torch.float64)
        values = totals.values.clone()
        values[0] *= applied  # a skipped step's loss stays out of the mean
        self.sums += torch.cat([values, applied.reshape(1)])
        self.steps += 1

    def read(self) -> tuple[dict[str, float], float]:
        """(the summed fields plus `applied_steps`, and the window's wall time in seconds)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the window's time includes its queued kernels
        values = self.sums.cpu().tolist()
        sums = dict(zip((*FIELDS, "applied_steps"), values, strict=True))
        sums["steps"] = float(self.steps)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self._reset()
        return sums, elapsed


def step_metrics(
    sums: dict[str, float],
    world_size: int,
    elapsed_s: float,
    lr: float,
    grad_norm: float | None,
    peak: float | None,
) -> dict[str, float]:
    """The logged metrics of a window of steps (`StepWindow.read`), from the totals summed over ranks.

    `train/loss` is the mean over the window's applied steps (left out when every step was skipped); rates
    are the window's totals over its wall time, so with `log_every` 1 they are exactly the step's own.
    """
    steps = max(sums.get("steps", 1.0), 1.0)
    out = {
        "train/lr": lr,
        "perf/samples_per_s": sums["samples"] / elapsed_s,
        "perf/tokens_per_s": sums["tokens"] / elapsed_s,
        "perf/step_time_s": elapsed_s / steps,
        "data/wait_share": min(1.0, sums["data_wait_s"] / world_size / elapsed_s),
    }
    applied = sums.get("applied_steps", steps)
    if applied > 0:
        out["train/loss"] = sums["loss"] / world_size / applied
    if grad_norm is not None:
        out["train/grad_norm"] = float(grad_norm)
    if peak:
        out["perf/mfu"] = sums["flops"] / elapsed_s / (peak * world_size)
    return out
