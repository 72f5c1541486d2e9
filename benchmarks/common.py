"""What the benchmarks share: one timer that counts the GPU's work, and the flags every model benchmark has.

`stopwatch` synchronizes CUDA when it starts and when it is read (without that, a GPU benchmark times
how fast kernels are queued); `timed` times calls one by one (CUDA events on a GPU, the host clock
elsewhere). `parser` adds the shared flags (`--preset`, `--frames`, `--height`, `--width`, `--warmup`,
`--steps`, `--out`) with each script's own defaults, so their names and meaning cannot drift apart.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch


def sync(device: torch.device | None = None) -> None:
    """Wait for the GPU's queued work (a no-op on a CPU)."""
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        torch.cuda.synchronize(device)


def stopwatch(device: torch.device | None = None) -> Callable[[], float]:
    """`elapsed = stopwatch(device); …; seconds = elapsed()`: seconds since the start, the GPU's queued
    work included (synchronized at the start and at each reading)."""
    sync(device)
    start = time.perf_counter()

    def elapsed() -> float:
        sync(device)
        return time.perf_counter() - start

    return elapsed


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed calls: CUDA events on a GPU (the
    GPU's time of the call), the host clock on a CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return times


def parser(
    doc: str | None,
    *,
    preset: str | None = None,
    shape: tuple[int, int, int] | None = None,
    warmup: int | None = None,
    steps: int | None = None,
    out: bool = False,
    **kwargs: object,
) -> argparse.ArgumentParser:
    """An ArgumentParser (description: the first line of `doc`) with the shared flags a script asks for, at
    its defaults: `preset`, `shape` (frames, height, width), `warmup` and `steps`, `out` (a JSON path)."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None, **kwargs)
    if preset is not None:
        ap.add_argument("--preset", default=preset)
    if shape is not None:
        frames, height, width = shape
        ap.add_argument("--frames", type=int, default=frames)
        ap.add_argument("--height", type=int, default=height)
        ap.add_argument("--width", type=int, default=width)
    if warmup is not None:
        ap.add_argument("--warmup", type=int, default=warmup)
    if steps is not None:
        ap.add_argument("--steps", type=int, default=steps)
    if out:
        ap.add_argument("--out", type=Path, default=None)
    return ap
