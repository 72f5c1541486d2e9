"""model.generate: text → frames with a tiny LinearDiT, bidirectional and block by block, written as mp4."""

from __future__ import annotations

import pytest
import torch
from model_test_support import one_thread  # noqa: F401  (fixture)

from model.autoencoders import build_autoencoder
from model.config import LinearDiTConfig
from model.generate import generate_video, save_video
from model.linear_dit import LinearDiT
from model.text_encoders import build_text_encoder
from model.video_io import read_frames

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    model = LinearDiT(LinearDiTConfig.from_preset("tiny")).eval()
    with torch.no_grad():
        for block in model.blocks:  # zero at init (official); non-zero so block boundaries matter
            block.ff.conv_temp.weight.normal_(0, 0.05)
    autoencoder = build_autoencoder("space_to_depth", stride=(1, 4, 4))
    text_encoder = build_text_encoder("hashed", channels=64, max_length=16)
    return model, autoencoder, text_encoder


SIZE = {"num_frames": 6, "height": 32, "width": 48}


def test_generate_bidirectional_and_blockwise_then_write_mp4(parts, tmp_path):
    kwargs = {"steps": 4, "guidance_scale": 4.0, "negative_prompt": "blurry", "seed": 7, **SIZE}
    whole = generate_video(*parts, "a red fox in the snow", **kwargs)
    assert whole.shape == (6, 32, 48, 3) and whole.dtype == torch.uint8
    assert whole.float().std() > 1  # not a constant image
    assert torch.equal(whole, generate_video(*parts, "a red fox in the snow", **kwargs))
    assert not torch.equal(whole, generate_video(*parts, "a red fox in the snow", **{**kwargs, "seed": 8}))
    assert not torch.equal(whole, generate_video(*parts, "a blue bird", **kwargs))

    # One block holding every frame is the bidirectional model (up to fp32 rounding in uint8).
    single = generate_video(*parts, "a red fox in the snow", block_frames=6, **kwargs)
    assert (single.int() - whole.int()).abs().max() <= 1
    # Blocks of 2 latent frames: a different (block-causal) video, same size.
    blocks = generate_video(*parts, "a red fox in the snow", block_frames=2, **kwargs)
    assert blocks.shape == whole.shape and not torch.equal(blocks, whole)

    for name, frames in (("whole", whole), ("blocks", blocks)):
        path = save_video(frames, tmp_path / f"{name}.mp4", fps=8)
        decoded = read_frames(path)
        assert decoded.shape == (6, 32, 48, 3)


def test_generate_long_video_with_the_few_step_renoise_sampler(parts, tmp_path):
    frames = generate_video(
        *parts,
        "a long walk",
        num_frames=20,
        height=16,
        width=16,
        guidance_scale=1.0,
        sampler="renoise",
        denoising_steps=[1000, 960, 889, 727],
        block_frames=3,
        seed=1,
    )
    assert frames.shape == (20, 16, 16, 3)
    assert read_frames(save_video(frames, tmp_path / "long.mp4", fps=16)).shape == (20, 16, 16, 3)


def test_generate_rejects_sizes_and_parts_that_do_not_fit(parts):
    model, autoencoder, text_encoder = parts
    with pytest.raises(ValueError, match="multiples of 8/8"):
        generate_video(model, autoencoder, text_encoder, "x", num_frames=2, height=36, width=32, steps=1)
    with pytest.raises(ValueError, match="latent channels"):
        generate_video(
            model, build_autoencoder("space_to_depth", stride=(1, 2, 2)), text_encoder, "x", **SIZE
        )
    with pytest.raises(ValueError, match="caption_channels"):
        generate_video(model, autoencoder, build_text_encoder("hashed", channels=32), "x", **SIZE)
    with pytest.raises(ValueError, match="uint8"):
        save_video(torch.zeros(2, 8, 8, 3), "/tmp/never.mp4")


def test_generate_through_a_wan_vae_loaded_from_a_folder(tmp_path):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    ).save_pretrained(tmp_path)
    config = LinearDiTConfig.from_preset("tiny", in_channels=4, out_channels=4, vae_stride=(4, 8, 8))
    model = LinearDiT(config).eval()
    frames = generate_video(
        model,
        build_autoencoder("wan2.1", path=tmp_path),
        build_text_encoder("hashed", channels=64, max_length=8),
        "a tiny test",
        num_frames=9,
        height=32,
        width=32,
        steps=2,
        block_frames=1,
    )
    assert frames.shape == (9, 32, 32, 3) and frames.dtype == torch.uint8
