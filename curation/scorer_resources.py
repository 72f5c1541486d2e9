"""What each scorer actor asks Ray for, so that the decoders and every scorer pool fit the cluster.

A scorer pool's actors hold their resources for the whole job. Ray Data's default (1 CPU per actor, and our
old default of 1 GPU per scorer) deadlocks small machines: on 2 CPUs, an aesthetic and a caption actor hold
both CPUs and no decode task ever starts; on 1 GPU, the second scorer pool never gets its GPU. Unset
(`null`), the shares are sized from the cluster: every scorer actor and at least one decoder fit.
"""

from __future__ import annotations

from dataclasses import dataclass

# A decoder task takes one CPU; a scorer actor never gets less than this (its batches' pre-processing).
MIN_CPUS_PER_SCORER = 0.25


@dataclass(frozen=True)
class ScorerShare:
    cpus: float
    gpus: float  # 0 on a cluster without GPUs


def scorer_share(
    actors: int, cluster_cpus: float, cluster_gpus: float, cpus: float | None, gpus: float | None
) -> ScorerShare:
    """Per-actor CPUs and GPUs for `actors` scorer actors (the pools' minimum sizes, all stages together).

    `cpus`/`gpus`: the configured values (None: sized here). Auto CPUs: 1 when the cluster keeps a CPU for a
    decoder beside them, else an even split of all but one CPU. Auto GPUs: the cluster's GPUs shared evenly
    by the actors, at most one each."""
    if actors <= 0:
        return ScorerShare(0.0, 0.0)
    if cpus is None:
        spare = max(cluster_cpus - 1.0, 0.0)  # one CPU stays with the decoders
        cpus = 1.0 if spare >= actors else max(spare / actors, MIN_CPUS_PER_SCORER)
    if cluster_gpus <= 0:
        return ScorerShare(cpus, 0.0)
    if gpus is None:
        gpus = min(1.0, cluster_gpus / actors)
    return ScorerShare(cpus, gpus)
