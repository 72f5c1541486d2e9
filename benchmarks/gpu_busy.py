"""How busy the GPU was over each part of a run: `nvidia-smi` sampled in the background, read per window.

    with GpuBusy(log_path) as busy:
        with busy.window("curate"):
            ...
    busy.summary()   # {"curate": {"busy_pct": 71.0, "mem_max_gib": 40.2, "samples": 120, "wall_s": 60.1}}

Utilisation is nvidia-smi's "percent of time over the past sample period during which one or more kernels
was executing": a GPU waiting on CPU decoders or on the disk shows as idle. Without nvidia-smi (the CPU
machine) every window still gets its wall time, and busy_pct None.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

QUERY = ["--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits"]


class GpuBusy:
    """nvidia-smi every `period_ms` into `log_path` (time, gpu, util %, MiB) while the context is open."""

    def __init__(self, log_path: Path, period_ms: int = 500) -> None:
        self.log_path = log_path
        self.period_ms = period_ms
        self.samples: list[tuple[float, int, float, float]] = []
        self.windows: dict[str, tuple[float, float]] = {}
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> GpuBusy:
        smi = shutil.which("nvidia-smi")
        if smi:
            argv = [smi, *QUERY, f"--loop-ms={self.period_ms}"]
            self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1)
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        with self.log_path.open("a") as log:
            for t, gpu, util, mem in self.samples:
                log.write(f"{t:.2f},{gpu},{util:.0f},{mem:.0f}\n")

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            with contextlib.suppress(ValueError, IndexError):
                self.samples.append((time.time(), int(parts[0]), float(parts[1]), float(parts[2])))

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.windows[name] = (start, time.time())

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        out: dict[str, dict[str, float | int | None]] = {}
        for name, (start, end) in self.windows.items():
            inside = [s for s in self.samples if start <= s[0] <= end]
            out[name] = {
                "wall_s": round(end - start, 1),
                "samples": len(inside),
                "busy_pct": round(sum(s[2] for s in inside) / len(inside), 1) if inside else None,
                "mem_max_gib": round(max(s[3] for s in inside) / 1024, 1) if inside else None,
            }
        return out
