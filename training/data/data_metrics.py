"""The data counters as metrics (`data/samples_read`, `data/skipped/<reason>`, …), summed over all ranks.

Each rank reads its own batches, so each rank's `StageData.stats` counts only what it met; logging rank 0's
alone under-reports by the world size (and misses bad samples the other ranks met). `data_metrics` gathers
every rank's counters at the log interval (the checkpoint steps, where every rank already meets) and sums
them. `fits_no_bucket` is counted over the whole index by every rank, so it is taken once, not summed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

INDEX_WIDE = frozenset({"data/skipped/fits_no_bucket"})  # the same global count on every rank
SKIPPED_PREFIX = "data/skipped/"
SKIPPED_TOTAL = "data/skipped_total"


def local_data_metrics(stats: Any) -> dict[str, float]:
    """One rank's counters as metrics (`DataStats.to_dict()`, nested dicts flattened under `data/`)."""
    if stats is None:
        return {}
    raw = stats.to_dict() if hasattr(stats, "to_dict") else dict(vars(stats))
    out: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update({f"data/{key}/{k}": float(v) for k, v in value.items()})
        elif isinstance(value, int | float):
            out[f"data/{key}"] = float(value)
    return out


def sum_ranks(per_rank: list[Mapping[str, float]]) -> dict[str, float]:
    """Every rank's counters summed (index-wide ones taken once); `data/skipped_total` recomputed."""
    out: dict[str, float] = {}
    for metrics in per_rank:
        for key, value in metrics.items():
            out[key] = max(out.get(key, 0.0), value) if key in INDEX_WIDE else out.get(key, 0.0) + value
    if SKIPPED_TOTAL in out:
        out[SKIPPED_TOTAL] = sum(v for k, v in out.items() if k.startswith(SKIPPED_PREFIX))
    return out


def data_metrics(stats: Any) -> dict[str, float]:
    """The counters of all ranks, summed. A collective: every rank must call it at the same step."""
    import torch.distributed as dist

    local = local_data_metrics(stats)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return sum_ranks(gathered)
