"""model.autoencoders: the exact space-to-depth backend, and the diffusers VAEs loaded from tiny random
models saved to a folder (the code path real weights take)."""

from __future__ import annotations

import pytest
import torch
from model_test_support import one_thread  # noqa: F401  (fixture)

from model.autoencoders import build_autoencoder

pytestmark = pytest.mark.usefixtures("one_thread")


def _video(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, frames, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize(("stride", "channels"), [((1, 4, 4), 48), ((1, 2, 2), 12), ((2, 2, 4), 48)])
def test_space_to_depth_is_exactly_invertible(stride, channels):
    ae = build_autoencoder("space_to_depth", stride=stride)
    assert ae.latent_channels == channels and ae.stride == stride and ae.name == "space_to_depth"
    video = _video(4, 16, 24)
    latents = ae.encode(video)
    assert latents.shape == (2, channels, 4 // stride[0], 16 // stride[1], 24 // stride[2])
    assert torch.equal(ae.decode(latents), video)
    assert ae.latent_frames(4) == 4 // stride[0] and ae.pixel_frames(ae.latent_frames(4)) == 4


def test_space_to_depth_channel_layout():
    ae = build_autoencoder("space_to_depth", stride=(2, 2, 4))
    video = _video(4, 8, 8)
    latents = ae.encode(video)
    # Channel ((c·t + i)·h + j)·w + k of latent (f, y, x) is pixel (c, f·t + i, y·h + j, x·w + k).
    c, i, j, k, f, y, x = 2, 1, 0, 3, 1, 2, 1
    channel = ((c * 2 + i) * 2 + j) * 4 + k
    assert latents[1, channel, f, y, x] == video[1, c, f * 2 + i, y * 2 + j, x * 4 + k]


def test_space_to_depth_rejects_sizes_it_cannot_fold():
    ae = build_autoencoder("space_to_depth", stride=(2, 4, 4))
    with pytest.raises(ValueError, match="multiple of 2 frames"):
        ae.encode(_video(3, 16, 16))
    with pytest.raises(ValueError, match="multiples of 4/4"):
        ae.encode(_video(4, 16, 18))
    with pytest.raises(ValueError, match="latents must be"):
        ae.decode(torch.zeros(1, 12, 2, 4, 4))
    with pytest.raises(ValueError, match="no weights"):
        build_autoencoder("space_to_depth", path="/tmp")
    with pytest.raises(ValueError, match="unknown autoencoder"):
        build_autoencoder("vqgan")


def _tiny_wan(folder):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 2.0, 0.5, 1.0],
    )
    vae.save_pretrained(folder)
    return vae


def test_wan_autoencoder_from_a_local_folder(tmp_path):
    vae = _tiny_wan(tmp_path / "pipeline" / "vae")
    for path in (tmp_path / "pipeline" / "vae", tmp_path / "pipeline"):  # the VAE folder or its pipeline
        ae = build_autoencoder("wan2.1", path=path)
        assert (ae.name, ae.latent_channels, ae.stride) == ("wan2.1", 4, (4, 8, 8))
    # Causal frame rule: the first frame alone, then 4 frames per latent.
    assert [ae.latent_frames(t) for t in (1, 5, 9, 81)] == [1, 2, 3, 21]
    assert ae.pixel_frames(21) == 81
    with pytest.raises(ValueError, match=r"1 \+ 4·k frames"):
        ae.latent_frames(80)

    video = _video(9, 16, 24)
    latents = ae.encode(video)
    assert latents.shape == (2, 4, 3, 2, 3)
    # Wan's normalisation: (mode − latents_mean) / latents_std, and decode undoes it.
    with torch.no_grad():
        raw = vae.encode(video).latent_dist.mode()
        mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1)
        std = torch.tensor([1.5, 2.0, 0.5, 1.0]).view(1, 4, 1, 1, 1)
        torch.testing.assert_close(latents, (raw - mean) / std)
        expected = vae.decode(raw).sample
    decoded = ae.decode(latents)
    assert decoded.shape == video.shape and decoded.abs().max() <= 1
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=1e-5)


def test_ltx2_autoencoder_from_a_local_folder(tmp_path):
    from diffusers import AutoencoderKLLTX2Video

    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(
        latent_channels=8,
        block_out_channels=(8, 16, 32, 64),
        decoder_block_out_channels=(8, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
    )
    with torch.no_grad():
        vae.latents_mean.copy_(torch.linspace(-0.5, 0.5, 8))
        vae.latents_std.copy_(torch.linspace(0.5, 2.0, 8))
    vae.save_pretrained(tmp_path)
    ae = build_autoencoder("ltx2", path=tmp_path)
    # LTX-2's layout (spatial, temporal, spatiotemporal ×2 after a 4×4 patch) compresses (8, 32, 32).
    assert (ae.latent_channels, ae.stride) == (8, (8, 32, 32))
    video = _video(9, 64, 64)
    latents = ae.encode(video)
    assert latents.shape == (2, 8, 2, 2, 2)
    with torch.no_grad():
        raw = vae.encode(video).latent_dist.mode()
    torch.testing.assert_close(
        latents, (raw - vae.latents_mean.view(1, 8, 1, 1, 1)) / vae.latents_std.view(1, 8, 1, 1, 1)
    )
    assert ae.decode(latents).shape == video.shape


def test_missing_weights_are_clear_errors(tmp_path):
    missing = tmp_path / "no-such-vae"
    with pytest.raises(FileNotFoundError, match="no-such-vae"):
        build_autoencoder("wan2.1", path=missing)
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_autoencoder("wan2.1", path=tmp_path)
    with pytest.raises(ValueError, match="needs path"):
        build_autoencoder("ltx2")
