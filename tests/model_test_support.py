"""Fixtures shared by the model flow/sampler/autoencoder/text-encoder/generation tests (imported by them)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread: its tensors are tiny, so extra threads only add synchronisation,
    which costs tens of seconds when the machine's cores are busy with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
