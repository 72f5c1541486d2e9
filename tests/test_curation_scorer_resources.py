"""The scorer actors' resource shares: every scorer pool and at least one decoder fit the cluster."""

from __future__ import annotations

import pytest

from curation.config import CurationConfig
from curation.scorer_resources import MIN_CPUS_PER_SCORER, ScorerShare, scorer_share


def test_two_scorers_on_two_cores_leave_a_cpu_to_the_decoders():
    # The old default (1 CPU each) deadlocked here: both CPUs held by actors, no decode task could start.
    share = scorer_share(2, cluster_cpus=2, cluster_gpus=0, cpus=None, gpus=None)
    assert share == ScorerShare(0.5, 0.0)
    assert 2 * share.cpus + 1 <= 2


def test_big_machines_give_each_scorer_a_whole_cpu_and_share_the_gpus():
    assert scorer_share(2, cluster_cpus=16, cluster_gpus=1, cpus=None, gpus=None) == ScorerShare(1.0, 0.5)
    assert scorer_share(2, cluster_cpus=64, cluster_gpus=8, cpus=None, gpus=None) == ScorerShare(1.0, 1.0)
    assert scorer_share(4, cluster_cpus=1, cluster_gpus=0, cpus=None, gpus=None).cpus == MIN_CPUS_PER_SCORER


def test_configured_shares_are_kept_and_no_gpu_is_asked_for_without_gpus():
    assert scorer_share(2, 2, 0, cpus=2.0, gpus=1.0) == ScorerShare(2.0, 0.0)
    assert scorer_share(2, 16, 2, cpus=0.5, gpus=0.25) == ScorerShare(0.5, 0.25)
    assert scorer_share(0, 2, 1, None, None) == ScorerShare(0.0, 0.0)


def test_the_config_leaves_both_shares_unset_by_default():
    ray = CurationConfig().ray
    assert ray.cpus_per_scorer is None and ray.gpus_per_scorer is None
    with pytest.raises(ValueError):
        CurationConfig.model_validate({"ray": {"cpus_per_scorer": 0}})


def test_the_captioner_can_have_more_actors_than_the_other_scorers():
    """One H100 ran one captioner busy 89% of the pass with the GPU 21% busy: `stage_actors` gives the stage
    that sets the pace more actors, and the GPU is shared by all of them."""
    ray = CurationConfig.model_validate({"ray": {"stage_actors": {"caption": 3}}}).ray
    assert ray.actors_of("caption") == (3, 3) and ray.actors_of("aesthetic") == (1, 1)
    actors = sum(ray.actors_of(name)[0] for name in ("aesthetic", "caption"))
    assert scorer_share(actors, cluster_cpus=16, cluster_gpus=1, cpus=None, gpus=None) == ScorerShare(
        1.0, 0.25
    )
    grown = CurationConfig.model_validate(
        {"ray": {"stage_actors": {"caption": 2}, "scorer_max_concurrency": 4}}
    )
    assert grown.ray.actors_of("caption") == (2, 4) and grown.ray.actors_of("aesthetic") == (1, 4)
    with pytest.raises(ValueError, match="stage_actors.caption: must be >= 1"):
        CurationConfig.model_validate({"ray": {"stage_actors": {"caption": 0}}})
    with pytest.raises(ValueError, match="stage_actors"):
        CurationConfig.model_validate({"ray": {"stage_actors": {"captoin": 2}}})
