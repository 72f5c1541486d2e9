"""Image-to-video conditioning: the starting image as a clean first latent frame.

As diffusers' `SanaImageToVideoPipeline` does it: the image is resized to the video size (PIL, Lanczos, as its
`VideoProcessor` resizes a PIL image), scaled to [-1, 1], encoded by the autoencoder (posterior mode,
normalised latents) and put in place of the first latent frame of the initial noise. At every step the model
sees that frame at timestep 0 and the others at the step's timestep; only the other frames are stepped.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from core.errors import UserError

if TYPE_CHECKING:
    import PIL.Image

    from model.guidance import VelocityFn


def open_image(image: PIL.Image.Image | str | os.PathLike) -> PIL.Image.Image:
    """A PIL image from a PIL image or a path; an unreadable file is one ValueError line."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image
    path = Path(os.fspath(image))
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read image {path}: {type(err).__name__}: {err}") from None


def image_pixels(image: PIL.Image.Image | str | os.PathLike, height: int, width: int) -> torch.Tensor:
    """The image as (1, 3, height, width) float32 in [-1, 1], resized the way diffusers resizes a PIL image."""
    from PIL import Image

    pil = open_image(image).convert("RGB").resize((width, height), resample=Image.Resampling.LANCZOS)
    array = np.asarray(pil).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


def image_digest(image: PIL.Image.Image | str | os.PathLike) -> str:
    """sha256 of the image file's bytes (or of the RGB pixels of an in-memory image), for metadata."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()
    return hashlib.sha256(Path(os.fspath(image)).read_bytes()).hexdigest()


def encode_image(
    autoencoder, image: PIL.Image.Image | str | os.PathLike, height: int, width: int, device: torch.device
) -> torch.Tensor:
    """The image's latent frame (1, C, 1, H', W'), fp32 on `device`."""
    pixels = image_pixels(image, height, width).unsqueeze(2)
    return autoencoder.encode(pixels).float().to(device)


def with_clean_first_frame(fn: VelocityFn, first_frame: torch.Tensor) -> VelocityFn:
    """A velocity function over the frames after the first: it prepends the clean `first_frame`
    (1 or B, C, 1, H, W), feeds the model timestep 0 for it and the step's timestep for the others, and
    returns the velocity of the others, so a sampler steps only them (diffusers' conditioning mask)."""

    def fn_rest(
        x: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        batch, frames = x.shape[0], x.shape[2] + 1
        first = first_frame.to(x.dtype).expand(batch, -1, -1, -1, -1)
        per_frame = timesteps.reshape(batch, 1).expand(batch, frames).clone()
        per_frame[:, 0] = 0.0
        return fn(torch.cat([first, x], dim=2), per_frame, text, mask)[:, :, 1:]

    return fn_rest
