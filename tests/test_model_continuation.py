"""Continuation: a clip's latents folded into the constant-memory cache, then the blocks that follow."""

from __future__ import annotations

import pytest
import torch
from model_test_support import one_thread, tiny_generation_parts  # noqa: F401  (fixture)

from model.continuation import continue_video_to_file, iter_continuation_blocks, read_clip
from model.generate import generate_video_to_file
from model.samplers import block_ar_sample, fold_into_cache, guidance_text
from model.video_io import read_frames

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parts():
    return tiny_generation_parts(text_max_length=8)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_blocks_after_a_folded_clip_equal_blocks_after_the_models_own(parts, guidance_scale):
    model, _, text_encoder = parts
    text, mask = text_encoder.encode(["a river"])
    negative, negative_mask = text_encoder.encode([""], instruction=False)
    noise = torch.randn(1, 48, 6, 4, 4, generator=torch.Generator().manual_seed(2))
    kwargs = {"sampler": "euler", "steps": 3, "guidance_scale": guidance_scale}
    kwargs |= {"negative_text": negative, "negative_mask": negative_mask}
    generated = block_ar_sample(model, text, mask, 6, 2, (4, 4), noise=noise, **kwargs)
    # The first 4 frames given as a clean clip; the model continues with the last block.
    continued = block_ar_sample(
        model, text, mask, 2, 2, (4, 4), noise=noise[:, :, 4:], context=generated[:, :, :4], **kwargs
    )
    assert ((continued - generated[:, :, 4:]).norm() / generated[:, :, 4:].norm()).item() < 1e-5
    # A different clip gives a different continuation (the cache is really used).
    other = block_ar_sample(
        model, text, mask, 2, 2, (4, 4), noise=noise[:, :, 4:], context=-generated[:, :, :4], **kwargs
    )
    assert ((other - continued).norm() / continued.norm()).item() > 1e-2


def test_the_cache_does_not_grow_with_the_clip(parts):
    model, _, text_encoder = parts
    text, mask = guidance_text(*text_encoder.encode(["a river"]), *text_encoder.encode([""]))
    sizes = []
    for frames in (2, 8):
        cache = model.new_cache(2, latent_hw=(4, 4))
        fold_into_cache(model, torch.randn(1, 48, frames, 4, 4), text, mask, cache, block_frames=2)
        assert cache.num_frames == frames
        sizes.append(cache.nbytes())
    assert sizes[0] == sizes[1] > 0


def test_continue_an_mp4_to_one_mp4(parts, tmp_path):
    model, autoencoder, text_encoder = parts
    options = {"steps": 2, "guidance_scale": 1.0, "seed": 1, "height": 16, "width": 16}
    clip = generate_video_to_file(
        *parts, "a river", tmp_path / "clip.mp4", num_frames=5, block_frames=2, **options
    )
    del options["height"], options["width"]  # the clip's own size
    out, record = continue_video_to_file(
        *parts, "a river", clip, tmp_path / "more.mp4", num_frames=4, block_frames=2, **options
    )
    given, frames = read_frames(clip), read_frames(out)
    assert frames.shape == (9, 16, 16, 3)
    # The clip first (H.264 is lossy on 16x16 noise: closer to the clip than to the clip mirrored).
    error = abs(frames[:5].astype(int) - given.astype(int)).mean()
    assert error < abs(frames[:5].astype(int) - given[:, :, ::-1].astype(int)).mean() / 3
    assert record == {"continued_from": str(clip.resolve()), "frames_kept": 5}

    with pytest.raises(ValueError, match="shorter than one block of 2: ask for at least 2 frames"):
        next(
            iter_continuation_blocks(*parts, "x", read_clip(clip, autoencoder), num_frames=1, block_frames=2)
        )
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match=r"cannot read video .*broken\.mp4"):
        read_clip(tmp_path / "broken.mp4", autoencoder)
