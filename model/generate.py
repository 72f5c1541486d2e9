"""Text → video with a LinearDiT: bidirectional (whole clip at once) or block by block with the cache.

    prompt --text encoder--> caption embeddings ─┐
    seed --> noise (B, C, F, H', W') --sampler(LinearDiT velocity, CFG)--> latents --autoencoder--> frames

`generate_video` returns the frames as a uint8 tensor (T, H, W, 3); `save_video` writes them as H.264 mp4
through `model.video_io`. With `block_frames` set the latents are generated `block_frames` latent frames at a
time with LinearDiT's constant-memory cache, which is how minute-long video fits in memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from model.autoencoders import VideoAutoencoder
from model.linear_dit import LinearDiT
from model.samplers import (
    DEFAULT_INFERENCE_SHIFT,
    block_ar_sample,
    flow_sigmas,
    model_velocity,
    sample,
    sigmas_from_timesteps,
)
from model.text_encoders import TextEncoder
from model.video_io import write_mp4


def _check_compatible(model: LinearDiT, autoencoder: VideoAutoencoder, text_encoder: TextEncoder) -> None:
    cfg = model.config
    if autoencoder.latent_channels != cfg.in_channels:
        raise ValueError(
            f"autoencoder {autoencoder.name} gives {autoencoder.latent_channels} latent channels but the model "
            f"takes {cfg.in_channels}"
        )
    if text_encoder.caption_channels != cfg.caption_channels:
        raise ValueError(
            f"text encoder {text_encoder.name} gives {text_encoder.caption_channels} channels but the model "
            f"takes caption_channels={cfg.caption_channels}"
        )


def latent_grid(
    model: LinearDiT, autoencoder: VideoAutoencoder, num_frames: int, height: int, width: int
) -> tuple[int, int, int]:
    """Latent (F, H', W') of a video size; sizes the autoencoder or the model's patch cannot take are a
    ValueError that says which."""
    frames = autoencoder.latent_frames(num_frames)
    lat_h, lat_w = autoencoder.latent_size(height, width)
    pt, ph, pw = model.config.patch_size
    if frames % pt or lat_h % ph or lat_w % pw:
        st, sh, sw = autoencoder.stride
        raise ValueError(
            f"{num_frames}×{height}×{width} gives latents {frames}×{lat_h}×{lat_w}, not divisible by the model's "
            f"patch {pt}×{ph}×{pw}: height/width must be multiples of {sh * ph}/{sw * pw}"
        )
    return frames, lat_h, lat_w


def video_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """One decoded video (3, T, H, W) in [-1, 1] → frames (T, H, W, 3) uint8."""
    pixels = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().cpu()


@torch.no_grad()
def generate_video(
    model: LinearDiT,
    autoencoder: VideoAutoencoder,
    text_encoder: TextEncoder,
    prompt: str,
    *,
    num_frames: int,
    height: int,
    width: int,
    steps: int = 50,
    guidance_scale: float = 6.0,
    negative_prompt: str = "",
    shift: float = DEFAULT_INFERENCE_SHIFT,
    seed: int = 0,
    sampler: str = "dpm++",
    block_frames: int | None = None,
    denoising_steps: Sequence[float] | None = None,
) -> torch.Tensor:
    """Generate one video for `prompt`; returns frames (T, H, W, 3) uint8 with T = `num_frames`.

    The noise comes from a CPU generator seeded with `seed`, so a seed gives the same video on any device.
    Bidirectional by default; with `block_frames` (latent frames per block) block-autoregressive, each block
    denoised with `sampler` over `steps` shifted levels — or over the few-step list `denoising_steps`
    (e.g. [1000, 960, 889, 727] with `sampler="renoise"` for a LongSANA-style distilled model).
    """
    _check_compatible(model, autoencoder, text_encoder)
    frames, lat_h, lat_w = latent_grid(model, autoencoder, num_frames, height, width)
    param = next(model.parameters())

    text, text_mask = (t.to(param.device) for t in text_encoder.encode([prompt]))
    negative_text = negative_mask = None
    if guidance_scale != 1.0:
        negative_text, negative_mask = (
            t.to(param.device) for t in text_encoder.encode([negative_prompt], instruction=False)
        )

    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(1, model.config.in_channels, frames, lat_h, lat_w, generator=generator)
    noise = noise.to(param.device)
    if denoising_steps is None:
        schedule = flow_sigmas(steps, shift)
    else:
        schedule = sigmas_from_timesteps(denoising_steps, shift)
    guidance = {
        "guidance_scale": guidance_scale,
        "negative_text": negative_text,
        "negative_mask": negative_mask,
    }
    if block_frames is None:
        latents = sample(
            model_velocity(model),
            noise,
            text,
            text_mask,
            sampler=sampler,
            sigmas=schedule,
            generator=generator,
            **guidance,
        )
    else:
        latents = block_ar_sample(
            model,
            text,
            text_mask,
            frames,
            block_frames,
            (lat_h, lat_w),
            sampler=sampler,
            sigmas=schedule,
            generator=generator,
            noise=noise,
            **guidance,
        )
    return video_to_uint8(autoencoder.decode(latents)[0])


def save_video(frames: torch.Tensor, path: str | os.PathLike, fps: float = 16.0) -> Path:
    """Write frames (T, H, W, 3) uint8 as an H.264 mp4 (even H and W) and return the path."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be a (T, H, W, 3) uint8 tensor, got {frames.dtype} {tuple(frames.shape)}"
        )
    return write_mp4(frames.cpu().numpy(), path, fps)
