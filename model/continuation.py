"""Video continuation: a given clip, then what the block-autoregressive model generates after it.

    clip.mp4 --read, trim to a frame count the autoencoder takes--> frames --encode--> clean latents
    clean latents --fold_into_cache (update_cache block by block, no denoising)--> constant-size cache
    cache --iter_block_ar_sample--> new latent blocks --decode_blocks (after the clip's own)--> new frames

The output is the clip's frames (as read) followed by the new ones, streamed to one mp4 like long generation.
The cache stays the same size whatever the clip's length; the clip itself is encoded in one piece.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from model.autoencoders import VideoAutoencoder
from model.generate import _precision, _start, video_to_uint8
from model.linear_dit import LinearDiT
from model.samplers import autoregressive_segments, iter_block_ar_sample
from model.text_encoders import TextEncoder
from model.video_io import Mp4Writer, read_frames


def read_clip(path: str | os.PathLike, autoencoder: VideoAutoencoder) -> np.ndarray:
    """The clip's frames (T, H, W, 3) uint8, trimmed to the longest prefix the autoencoder can encode
    (4k + 1 frames for Wan2.1). An unreadable file is one ValueError line."""
    try:
        frames = read_frames(path)
    except (ValueError, OSError) as err:
        raise UserError(f"cannot read video {path}: {type(err).__name__}: {err}") from None
    for kept in range(len(frames), 0, -1):
        try:
            autoencoder.latent_frames(kept)
        except ValueError:
            continue
        return frames[:kept]
    raise UserError(f"video {path} has too few frames ({len(frames)}) for the {autoencoder.name} autoencoder")


def clip_latents(autoencoder: VideoAutoencoder, frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """Clean latents (1, C, F0, H', W') of uint8 frames (T, H, W, 3)."""
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)
    return autoencoder.encode(pixels.float() / 127.5 - 1.0).float().to(device)


def new_latent_frames(autoencoder: VideoAutoencoder, num_frames: int, block_frames: int) -> int:
    """Latent frames that cover `num_frames` new pixel frames; fewer than one block is a ValueError."""
    count = math.ceil(num_frames / autoencoder.stride[0])
    if count < block_frames:
        raise UserError(
            f"a continuation of {num_frames} frames is {count} latent frames, shorter than one block of "
            f"{block_frames}: ask for at least {block_frames * autoencoder.stride[0]} frames"
        )
    return count


@torch.no_grad()
def iter_continuation_blocks(
    model: LinearDiT,
    autoencoder: VideoAutoencoder,
    text_encoder: TextEncoder,
    prompt: str,
    clip: np.ndarray,
    *,
    num_frames: int,
    block_frames: int,
    precision: str = "native",
    **options,
) -> Iterator[torch.Tensor]:
    """uint8 frame blocks (T_i, H, W, 3) that continue `clip` (frames as `read_clip` gives them) by about
    `num_frames` frames (whole latent frames: a multiple of the temporal stride). The clip's latents are
    folded into the cache; its blocks are decoded too (a causal VAE needs them as context) but not yielded.
    `options` are `generate_video`'s (steps, guidance_scale, seed, sampler, numerics, …)."""
    height, width = clip.shape[1:3]
    count = new_latent_frames(autoencoder, num_frames, block_frames)
    start = _start(
        model, autoencoder, text_encoder, prompt, num_frames=len(clip), height=height, width=width, **options
    )
    context = clip_latents(autoencoder, clip, start.noise.device)
    noise = torch.randn(1, model.config.in_channels, count, *start.grid[1:], generator=start.generator)
    new_blocks = iter_block_ar_sample(
        model,
        start.text,
        start.text_mask,
        count,
        block_frames,
        tuple(start.grid[1:]),
        sampler=start.sampler,
        sigmas=start.schedule,
        generator=start.generator,
        noise=noise,
        context=context,
        **start.guidance,
    )
    context_blocks = [context[:, :, a:b] for a, b in autoregressive_segments(context.shape[2], block_frames)]

    def latent_blocks():
        yield from context_blocks
        for _, _, clean in new_blocks:
            yield clean

    with _precision(model, precision):
        for index, pixels in enumerate(autoencoder.decode_blocks(latent_blocks())):
            if index >= len(context_blocks):
                yield video_to_uint8(pixels[0])


def continue_video_to_file(
    model: LinearDiT,
    autoencoder: VideoAutoencoder,
    text_encoder: TextEncoder,
    prompt: str,
    clip_path: str | os.PathLike,
    path: str | os.PathLike,
    *,
    fps: float = 16.0,
    **options,
) -> tuple[Path, dict]:
    """Write the clip at `clip_path` followed by its continuation (`iter_continuation_blocks`, same
    options) to one mp4, block by block. Returns the path and what to record about the conditioning."""
    clip = read_clip(clip_path, autoencoder)
    with Mp4Writer(path, fps) as writer:
        writer.extend(clip)
        for frames in iter_continuation_blocks(model, autoencoder, text_encoder, prompt, clip, **options):
            writer.extend(frames.numpy())
    record = {"continued_from": str(Path(clip_path).resolve()), "frames_kept": len(clip)}
    return writer.path, record
