"""Text → video with a LinearDiT: bidirectional (whole clip at once) or block by block with the cache.

    prompt --text encoder--> caption embeddings ─┐
    seed --> noise (B, C, F, H', W') --sampler(LinearDiT velocity, CFG)--> latents --autoencoder--> frames

`generate_video` returns the frames as a uint8 tensor (T, H, W, 3); `save_video` writes them as H.264 mp4
through `model.video_io`. With `block_frames` set the latents are generated `block_frames` latent frames at a
time with LinearDiT's constant-memory cache; `iter_video_blocks` decodes and yields each block as soon as it
is denoised and `generate_video_to_file` appends it to the mp4, which is how minute-long video fits in memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from core.errors import UserError
from model import kernels
from model.autoencoders import VideoAutoencoder
from model.conditioning import encode_image, with_clean_first_frame
from model.kernels.precision import precision_context
from model.linear_dit import LinearDiT
from model.samplers import iter_block_ar_sample, model_velocity, sample
from model.schedules import (
    DEFAULT_INFERENCE_SHIFT,
    DEFAULT_NUMERICS,
    Schedule,
    effective_guidance,
    inference_schedule,
)
from model.text_encoders import TextEncoder
from model.video_io import Mp4Writer, write_mp4

if TYPE_CHECKING:
    import PIL.Image

log = logging.getLogger(__name__)
_PATH_SAID: dict[str, str | None] = {"last": None}


def _precision(model: LinearDiT, precision: str) -> contextlib.AbstractContextManager:
    """The context the sampler runs in for `precision`; logs which inference path generation takes."""
    context = precision_context(model, precision)  # a bad name is an error before anything is logged
    param = next(model.parameters())
    path = f"{kernels.describe_path(param.device, param.dtype)}; matmuls: {precision}"
    if path != _PATH_SAID["last"]:  # said when it changes: the demo generates three videos on one path
        _PATH_SAID["last"] = path
        log.info(path)
    return context


def _check_compatible(model: LinearDiT, autoencoder: VideoAutoencoder, text_encoder: TextEncoder) -> None:
    cfg = model.config
    if autoencoder.latent_channels != cfg.in_channels:
        raise UserError(
            f"autoencoder {autoencoder.name} gives {autoencoder.latent_channels} latent channels but the model "
            f"takes {cfg.in_channels}"
        )
    if text_encoder.caption_channels != cfg.caption_channels:
        raise UserError(
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
        raise UserError(
            f"{num_frames}×{height}×{width} gives latents {frames}×{lat_h}×{lat_w}, not divisible by the model's "
            f"patch {pt}×{ph}×{pw}: height/width must be multiples of {sh * ph}/{sw * pw}"
        )
    return frames, lat_h, lat_w


def video_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """One decoded video (3, T, H, W) in [-1, 1] → frames (T, H, W, 3) uint8."""
    pixels = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().cpu()


@dataclass
class _Start:
    """What both generation paths start from (`_start`)."""

    grid: tuple[int, int, int]
    text: torch.Tensor
    text_mask: torch.Tensor
    guidance: dict
    generator: torch.Generator
    noise: torch.Tensor
    schedule: Schedule
    sampler: str
    first_frame: torch.Tensor | None  # the encoded image of image-to-video, (1, C, 1, H', W')


def _start(
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
    denoising_steps: Sequence[float] | None = None,
    sampler: str | None = None,
    numerics: str = DEFAULT_NUMERICS,
    image: PIL.Image.Image | str | os.PathLike | None = None,
) -> _Start:
    """The latent grid, text, CFG inputs, seeded noise, schedule (`model.schedules`: diffusers' or the
    official numerics) and, for image-to-video, the image's latent frame. The sampler defaults to
    DPM-Solver++ from text and flow Euler from an image, as diffusers' two Sana video pipelines do."""
    _check_compatible(model, autoencoder, text_encoder)
    grid = latent_grid(model, autoencoder, num_frames, height, width)
    sampler = sampler or ("euler" if image is not None else "dpm++")
    schedule = inference_schedule(sampler, steps, shift, numerics, denoising_steps)
    guidance_scale = effective_guidance(guidance_scale, numerics)
    param = next(model.parameters())
    first_frame = None if image is None else encode_image(autoencoder, image, height, width, param.device)

    text, text_mask = (t.to(param.device) for t in text_encoder.encode([prompt]))
    negative_text = negative_mask = None
    if guidance_scale != 1.0:
        negative_text, negative_mask = (
            t.to(param.device) for t in text_encoder.encode([negative_prompt], instruction=False)
        )

    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(1, model.config.in_channels, *grid, generator=generator)
    guidance = {
        "guidance_scale": guidance_scale,
        "negative_text": negative_text,
        "negative_mask": negative_mask,
    }
    return _Start(
        grid, text, text_mask, guidance, generator, noise.to(param.device), schedule, sampler, first_frame
    )


@torch.no_grad()
def iter_video_blocks(
    model: LinearDiT,
    autoencoder: VideoAutoencoder,
    text_encoder: TextEncoder,
    prompt: str,
    *,
    num_frames: int,
    height: int,
    width: int,
    block_frames: int,
    steps: int = 50,
    guidance_scale: float = 6.0,
    negative_prompt: str = "",
    shift: float = DEFAULT_INFERENCE_SHIFT,
    seed: int = 0,
    sampler: str | None = None,
    denoising_steps: Sequence[float] | None = None,
    numerics: str = DEFAULT_NUMERICS,
    image: PIL.Image.Image | str | os.PathLike | None = None,
    precision: str = "native",
) -> Iterator[torch.Tensor]:
    """Block-autoregressive generation, streamed: yields uint8 frames (T_i, H, W, 3) block by block, each
    block decoded (`autoencoder.decode_blocks`) as soon as it is denoised.

    Only one block of latents and of pixels is live at a time, on top of the constant-size cache and the
    initial noise (latent-sized: 1/48 of the pixels for Wan2.1), so memory does not grow with the pixel
    length. Same arguments and seed semantics as `generate_video`; the concatenated blocks are its frames.
    """
    start = _start(
        model,
        autoencoder,
        text_encoder,
        prompt,
        num_frames=num_frames,
        height=height,
        width=width,
        steps=steps,
        guidance_scale=guidance_scale,
        negative_prompt=negative_prompt,
        shift=shift,
        seed=seed,
        denoising_steps=denoising_steps,
        sampler=sampler,
        numerics=numerics,
        image=image,
    )
    with _precision(model, precision):
        for pixels in autoencoder.decode_blocks(_latent_blocks(model, start, block_frames)):
            yield video_to_uint8(pixels[0])


def _latent_blocks(model: LinearDiT, start: _Start, block_frames: int) -> Iterator[torch.Tensor]:
    """The clean latents of each block, as the block-autoregressive sampler finishes them."""
    frames, lat_h, lat_w = start.grid
    blocks = iter_block_ar_sample(
        model,
        start.text,
        start.text_mask,
        frames,
        block_frames,
        (lat_h, lat_w),
        sampler=start.sampler,
        sigmas=start.schedule,
        generator=start.generator,
        noise=start.noise,
        first_frame=start.first_frame,
        **start.guidance,
    )
    return (clean for _, _, clean in blocks)


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
    sampler: str | None = None,
    block_frames: int | None = None,
    denoising_steps: Sequence[float] | None = None,
    numerics: str = DEFAULT_NUMERICS,
    image: PIL.Image.Image | str | os.PathLike | None = None,
    precision: str = "native",
) -> torch.Tensor:
    """Generate one video for `prompt`; returns frames (T, H, W, 3) uint8 with T = `num_frames`.

    The noise comes from a CPU generator seeded with `seed`, so a seed gives the same video on any device.
    Bidirectional by default; with `block_frames` (latent frames per block) block-autoregressive, each block
    denoised with `sampler` over `steps` shifted levels — or over the few-step list `denoising_steps`
    (e.g. [1000, 960, 889, 727] with `sampler="renoise"` for a LongSANA-style distilled model). All frames
    are returned at once, which suits short videos; long ones go through `generate_video_to_file`.
    `numerics="diffusers"` (default) reproduces diffusers' SanaVideoPipeline for the same weights and noise
    (its schedules and timesteps; guidance ≤ 1 is none); `"official"` the SANA-Video code's sampler
    (`model.schedules`). With `image` (a PIL image or a path) the video starts from it: image-to-video as
    diffusers' SanaImageToVideoPipeline (`model.conditioning`; flow Euler unless `sampler` says otherwise);
    block by block, the first block carries the image.

    `precision="fp8"` runs the transformer's large matmuls in float8 (`model.kernels.precision`, Hopper or newer);
    "native" keeps the model's dtype. On CUDA the linear attention takes the fused Triton kernel
    (`model.kernels`); the path taken is logged (logger `model.generate`).
    """
    options = {
        "num_frames": num_frames,
        "height": height,
        "width": width,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "negative_prompt": negative_prompt,
        "shift": shift,
        "seed": seed,
        "denoising_steps": denoising_steps,
        "sampler": sampler,
        "numerics": numerics,
        "image": image,
        "precision": precision,
    }
    if block_frames is not None:
        blocks = iter_video_blocks(
            model, autoencoder, text_encoder, prompt, block_frames=block_frames, **options
        )
        return torch.cat(list(blocks))
    latents = generate_latents(model, autoencoder, text_encoder, prompt, **options)
    return video_to_uint8(autoencoder.decode(latents)[0])


@torch.no_grad()
def generate_latents(
    model: LinearDiT,
    autoencoder: VideoAutoencoder,
    text_encoder: TextEncoder,
    prompt: str,
    *,
    precision: str = "native",
    **options,
) -> torch.Tensor:
    """The bidirectional path of `generate_video` up to the latents (1, C, F, H', W'), before decoding —
    what diffusers' pipelines return with `output_type="latent"`. Same keyword options."""
    start = _start(model, autoencoder, text_encoder, prompt, **options)
    velocity, noise = model_velocity(model), start.noise
    if start.first_frame is not None:  # only the frames after the image are stepped
        velocity, noise = with_clean_first_frame(velocity, start.first_frame), noise[:, :, 1:]
    with _precision(model, precision):
        latents = sample(
            velocity,
            noise,
            start.text,
            start.text_mask,
            sampler=start.sampler,
            sigmas=start.schedule,
            generator=start.generator,
            **start.guidance,
        )
    if start.first_frame is None:
        return latents
    return torch.cat([start.first_frame, latents], dim=2)


def generate_video_to_file(
    model: LinearDiT,
    autoencoder: VideoAutoencoder,
    text_encoder: TextEncoder,
    prompt: str,
    path: str | os.PathLike,
    *,
    fps: float = 16.0,
    block_frames: int,
    **options,
) -> Path:
    """Generate block by block (`iter_video_blocks`, same `options`) and append each block to one H.264 mp4
    as it is decoded, so a minute-long video is written with memory bounded by one block. The file appears
    (atomically) only once the whole video is written. Returns the path."""
    with Mp4Writer(path, fps) as writer:
        for frames in iter_video_blocks(
            model, autoencoder, text_encoder, prompt, block_frames=block_frames, **options
        ):
            writer.extend(frames.numpy())
    return writer.path


def save_video(frames: torch.Tensor, path: str | os.PathLike, fps: float = 16.0) -> Path:
    """Write frames (T, H, W, 3) uint8 as an H.264 mp4 (even H and W) and return the path."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise UserError(
            f"frames must be a (T, H, W, 3) uint8 tensor, got {frames.dtype} {tuple(frames.shape)}"
        )
    return write_mp4(frames.cpu().numpy(), path, fps)
