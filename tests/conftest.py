"""Shared fixtures: one local Ray per test session (ray.init costs ~15-20 s on 2 cores)."""

from __future__ import annotations

import os

import pytest

# DeepSpeed picks its accelerator at import time; CPU machines must say so before anything imports it.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# As `svp` does for its private Ray (orchestration.ray_connect): Ray 2.60 reads the mode when first imported,
# so it is set here, before any test module imports Ray; subprocess `svp` runs inherit it.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray shared by every test that needs one (started on first use)."""
    import ray

    if not ray.is_initialized():
        # More logical CPUs than cores so a 2-worker Train job, its controller and Ray Data tasks can be
        # scheduled together on a 2-core machine. address="local": a private Ray, never a cluster that
        # happens to run on this machine (a test's own `ray start` cluster, another user's).
        ray.init(address="local", num_cpus=4, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()
