"""Exponential moving average of the model weights, kept off the training step's critical path.

Every `update_every` steps the trainable weights are snapshotted to CPU (the only work on the training thread;
asynchronous from a GPU) and a background thread folds the snapshot into an fp32 CPU copy with
`decay ** update_every`, so the average approximates a per-step EMA of the same horizon. The step never
waits for the fold; only reading or saving the average does.

Under ZeRO-1/2 every rank holds the full module weights, so one rank (world rank 0) keeps the average. With
bf16 the snapshot is of the bf16 module weights (the fp32 master copy is partitioned across ranks); the
average itself is fp32.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from core.atomic import atomic_write
from core.errors import UserError


class EMA:
    """fp32 CPU moving average of a module's trainable parameters."""

    def __init__(self, module: torch.nn.Module, decay: float, update_every: int = 1) -> None:
        if not 0.0 < decay < 1.0:
            raise UserError(f"ema.decay: must be in (0, 1), got {decay}")
        if update_every < 1:
            raise UserError(f"ema.update_every: must be >= 1, got {update_every}")
        self.decay = decay
        self.update_every = update_every
        self.shadow = {name: p.detach().to("cpu", torch.float32, copy=True) for name, p in _trainable(module)}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ema")
        self._pending: Future | None = None

    def maybe_update(self, module: torch.nn.Module, step: int) -> bool:
        """Fold the current weights in when `step` is a multiple of `update_every`; returns whether it did."""
        if step % self.update_every:
            return False
        snapshot = {
            name: p.detach().to("cpu", copy=True, non_blocking=True) for name, p in _trainable(module)
        }
        if any(p.is_cuda for _, p in _trainable(module)):
            torch.cuda.current_stream().synchronize()  # the snapshot copies must land before the thread reads them
        # One worker thread: folds run in submission order, so waiting on the last one waits on all.
        self._pending = self._pool.submit(self._fold, snapshot, 1.0 - self.decay**self.update_every)
        return True

    def _fold(self, snapshot: dict[str, torch.Tensor], weight: float) -> None:
        with torch.no_grad():
            for name, value in snapshot.items():
                self.shadow[name].lerp_(value.float(), weight)

    def wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.wait()
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.wait()
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} weights, e.g. {missing[:3]}")
        for name in self.shadow:
            self.shadow[name].copy_(state[name])

    def save(self, path: Path) -> None:
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        atomic_write(path, lambda tmp: save_file(state, str(tmp)))  # the umask's mode, not safetensors' 0600

    def load(self, path: Path) -> None:
        self.load_state_dict(load_file(str(path)))

    def close(self) -> None:
        self.wait()
        self._pool.shutdown(wait=True)


def _trainable(module: torch.nn.Module):
    return ((name, p) for name, p in module.named_parameters() if p.requires_grad)
