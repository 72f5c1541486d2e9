"""model.generate: text → frames with a tiny LinearDiT, bidirectional and block by block, written as mp4."""

from __future__ import annotations

import pytest
import torch
from model_test_support import one_thread, tiny_generation_parts  # noqa: F401  (fixture)

from model.autoencoders import build_autoencoder
from model.config import LinearDiTConfig
from model.generate import (
    generate_video,
    generate_video_to_file,
    iter_video_blocks,
    save_video,
    video_to_uint8,
)
from model.linear_dit import LinearDiT
from model.samplers import block_ar_sample
from model.schedules import flow_sigmas
from model.text_encoders import build_text_encoder
from model.video_io import Mp4Writer, encode_mp4, read_frames

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parts():
    return tiny_generation_parts(text_max_length=16)


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
    _check_wan_block_decode(build_autoencoder("wan2.1", path=tmp_path))
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


def _check_wan_block_decode(autoencoder):
    """Wan's block-wise decode carries the VAE's own causal feat_cache, so it is the all-at-once decode
    exactly; the left-context fallback (for VAEs without such a cache) keeps the frame count only."""
    torch.manual_seed(1)
    latents = torch.randn(1, 4, 6, 4, 4)
    whole = autoencoder.decode(latents)
    splits = [latents[:, :, :1], latents[:, :, 1:4], latents[:, :, 4:]]
    parts = list(autoencoder.decode_blocks(splits))
    assert [p.shape[2] for p in parts] == [1, 12, 8]
    assert torch.equal(torch.cat(parts, dim=2), whole)
    with torch.no_grad():
        fallback = list(autoencoder._decode_blocks_with_left_context(splits))
    assert torch.cat(fallback, dim=2).shape == whole.shape


def test_streamed_blocks_equal_the_all_at_once_decode_and_stay_one_block_big(parts):
    model, autoencoder, text_encoder = parts
    kwargs = {"steps": 3, "guidance_scale": 3.0, "seed": 5, "num_frames": 7, "height": 16, "width": 32}
    blocks = list(iter_video_blocks(*parts, "a river", block_frames=3, numerics="official", **kwargs))
    # Segments put the remainder first: 7 latent frames in blocks of 3 -> [0, 4, 7]; stride 1 -> 4 + 3 frames.
    assert [b.shape for b in blocks] == [(4, 16, 32, 3), (3, 16, 32, 3)]
    assert all(b.dtype == torch.uint8 for b in blocks)

    # Reference: the same seeded latents decoded all at once (the pre-streaming path), built independently.
    text, mask = text_encoder.encode(["a river"])
    negative, negative_mask = text_encoder.encode([""], instruction=False)
    noise = torch.randn(1, 48, 7, 4, 8, generator=(generator := torch.Generator().manual_seed(5)))
    latents = block_ar_sample(
        model,
        text,
        mask,
        7,
        3,
        (4, 8),
        sampler="dpm++",
        sigmas=flow_sigmas(3),
        generator=generator,
        noise=noise,
        guidance_scale=3.0,
        negative_text=negative,
        negative_mask=negative_mask,
    )
    whole = video_to_uint8(autoencoder.decode(latents)[0])
    assert torch.equal(torch.cat(blocks), whole)
    assert torch.equal(
        generate_video(*parts, "a river", block_frames=3, numerics="official", **kwargs), whole
    )


def test_generate_video_to_file_appends_blocks_to_one_mp4(parts, tmp_path):
    kwargs = {"steps": 2, "guidance_scale": 1.0, "seed": 2, "num_frames": 10, "height": 16, "width": 16}
    path = generate_video_to_file(
        *parts, "a long road", tmp_path / "out" / "long.mp4", fps=8, block_frames=2, **kwargs
    )
    assert path == tmp_path / "out" / "long.mp4" and sorted(p.name for p in path.parent.iterdir()) == [
        "long.mp4"
    ]
    frames = generate_video(*parts, "a long road", block_frames=2, **kwargs)
    # Same codec settings as the one-shot encoder: the incrementally written file is byte-identical.
    assert path.read_bytes() == encode_mp4(frames.numpy(), 8)
    assert read_frames(path).shape == (10, 16, 16, 3)


def test_mp4_writer_checks_frames_and_leaves_nothing_behind_on_error(tmp_path):
    target = tmp_path / "broken.mp4"
    with pytest.raises(ValueError, match="the video is 16×16"), Mp4Writer(target, 8) as writer:
        writer.append(torch.zeros(16, 16, 3, dtype=torch.uint8).numpy())
        writer.append(torch.zeros(16, 32, 3, dtype=torch.uint8).numpy())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no frames"), Mp4Writer(target, 8):
        pass
    assert list(tmp_path.iterdir()) == []
