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


def tiny_model():
    """The tiny LinearDiT, seeded, in eval mode, with its temporal convs non-zero: they are zero at init
    (official), which would leave them (and block boundaries) out of every check."""
    from model.config import LinearDiTConfig
    from model.linear_dit import LinearDiT

    torch.manual_seed(0)
    model = LinearDiT(LinearDiTConfig.from_preset("tiny")).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.ff.conv_temp.weight.normal_(0, 0.05)
    return model


def tiny_generation_parts(text_max_length: int):
    """A tiny LinearDiT (`tiny_model`), a space-to-depth autoencoder and a hashed text encoder: everything
    `model.generate` and `model.continuation` need, built in milliseconds."""
    from model.autoencoders import build_autoencoder
    from model.text_encoders import build_text_encoder

    model = tiny_model()
    autoencoder = build_autoencoder("space_to_depth", stride=(1, 4, 4))
    text_encoder = build_text_encoder("hashed", channels=64, max_length=text_max_length)
    return model, autoencoder, text_encoder
