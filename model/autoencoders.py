"""Video autoencoders behind one interface: pixels (B, 3, T, H, W) in [-1, 1] ⇄ latents (B, C, F, H', W').

Backends (`build_autoencoder(name, path, ...)`):
- `space_to_depth`: parameter-free and exactly invertible; folds (t, h, w) pixel blocks into channels, so a
  stride of (1, 4, 4) gives 48 channels and (1, 2, 2) gives 12. For tiny runs with no weights.
- `wan2.1`: the Wan2.1 VAE of SANA-Video 480p (16 channels, stride (4, 8, 8)) through diffusers'
  `AutoencoderKLWan`, with Wan's per-channel latent normalisation.
- `ltx2`: the LTX-2 video VAE of SANA-Video 720p (128 channels, stride (8, 32, 32)) through diffusers'
  `AutoencoderKLLTX2Video`, with its latent normalisation.

The diffusers backends load only from a local folder (the VAE's own folder, or a pipeline folder with a
`vae/` subfolder); nothing downloads. Both VAEs are causal in time: the first frame is encoded on its own, so
T pixel frames give F = 1 + (T − 1)/t latent frames.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from core.errors import UserError


class VideoAutoencoder(ABC):
    """The autoencoder interface the trainer and the generator use."""

    name: str
    latent_channels: int
    stride: tuple[int, int, int]  # (t, h, w) pixels per latent
    causal: bool  # True: F = 1 + (T − 1)/t; False: F = T/t

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames for `num_frames` pixel frames; a count that does not fit is a ValueError."""
        t = self.stride[0]
        if self.causal:
            if num_frames < 1 or (num_frames - 1) % t:
                raise UserError(
                    f"{self.name} autoencoder needs 1 + {t}·k frames (e.g. {1 + t * max(1, num_frames // t)}), "
                    f"got {num_frames}"
                )
            return 1 + (num_frames - 1) // t
        if num_frames < 1 or num_frames % t:
            raise UserError(f"{self.name} autoencoder needs a multiple of {t} frames, got {num_frames}")
        return num_frames // t

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames that `latent_frames` latent frames decode to."""
        if latent_frames < 1:
            raise ValueError(f"latent frame count must be >= 1, got {latent_frames}")
        t = self.stride[0]
        return 1 + t * (latent_frames - 1) if self.causal else t * latent_frames

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent (H', W') for a pixel size; sizes that are not multiples of the stride are a ValueError."""
        _, sh, sw = self.stride
        if height < 1 or width < 1 or height % sh or width % sw:
            raise ValueError(
                f"{self.name} autoencoder needs height/width multiples of {sh}/{sw}, got {height}×{width}"
            )
        return height // sh, width // sw

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be (B, 3, T, H, W), got shape {tuple(video.shape)}")
        self.latent_frames(video.shape[2])
        self.latent_size(video.shape[3], video.shape[4])

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be (B, {self.latent_channels}, F, H', W') for {self.name}, "
                f"got shape {tuple(latents.shape)}"
            )

    @abstractmethod
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, T, H, W) in [-1, 1] → normalised latents (B, C, F, H', W')."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, F, H', W') → pixels (B, 3, T, H, W) in [-1, 1]."""

    def decode_blocks(self, blocks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Decode latents that arrive as consecutive blocks along time (B, C, F_i, H', W'), yielding each
        block's pixels (B, 3, T_i, H, W) as soon as it is in, so a long video never has to be decoded (or held)
        whole. Concatenated, the yields are `decode` of the concatenated latents.

        This default decodes each block on its own, which is exact for an autoencoder whose latent frames
        decode independently (space_to_depth); causal VAEs override it.
        """
        for block in blocks:
            yield self.decode(block)


class SpaceToDepthAutoencoder(VideoAutoencoder):
    """Folds each (t, h, w) block of pixels into channels; channel index = ((c·t + i)·h + j)·w + k."""

    causal = False

    def __init__(self, stride: tuple[int, int, int] = (1, 4, 4)):
        stride = tuple(int(s) for s in stride)
        if len(stride) != 3 or any(s < 1 for s in stride):
            raise UserError(f"space_to_depth stride must be three positive ints (t, h, w), got {stride}")
        self.stride = stride
        self.latent_channels = 3 * stride[0] * stride[1] * stride[2]
        self.name = "space_to_depth"

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self._check_video(video)
        b, c, frames, height, width = video.shape
        t, h, w = self.stride
        x = video.reshape(b, c, frames // t, t, height // h, h, width // w, w)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, self.latent_channels, frames // t, height // h, width // w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        b, _, frames, height, width = latents.shape
        t, h, w = self.stride
        x = latents.reshape(b, 3, t, h, w, frames, height, width)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(b, 3, frames * t, height * h, width * w)


def _vae_folder(path: str | os.PathLike | None, name: str) -> tuple[Path, str | None]:
    """The folder holding the VAE's config.json, and the diffusers `subfolder` inside it if any."""
    if path is None:
        raise UserError(f"the {name} autoencoder needs path=<local folder with the diffusers VAE>")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{name} autoencoder folder not found: {folder}")
    if (folder / "config.json").is_file():
        return folder, None
    if (folder / "vae" / "config.json").is_file():
        return folder, "vae"
    raise FileNotFoundError(f"no diffusers VAE (config.json or vae/config.json) in {folder}")


class DiffusersVideoAutoencoder(VideoAutoencoder):
    """A diffusers causal video VAE with per-channel latent normalisation z' = (z − mean)·scale / std.

    `encode` returns the posterior mode (deterministic, so precomputed latents are reproducible).
    """

    causal = True

    def __init__(
        self,
        name: str,
        vae: torch.nn.Module,
        stride: tuple[int, int, int],
        latents_mean: torch.Tensor,
        latents_std: torch.Tensor,
        scaling_factor: float = 1.0,
    ):
        self.name = name
        self.vae = vae.eval().requires_grad_(False)
        self.stride = stride
        self.latent_channels = int(latents_mean.numel())
        param = next(vae.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._mean = latents_mean.float().view(1, -1, 1, 1, 1).to(self.device)
        self._scale = (scaling_factor / latents_std.float()).view(1, -1, 1, 1, 1).to(self.device)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self._check_video(video)
        z = self.vae.encode(video.to(self.device, self.dtype)).latent_dist.mode().float()
        return (z - self._mean) * self._scale

    def _denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        z = latents.to(self.device).float() / self._scale + self._mean
        return z.to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        video = self.vae.decode(self._denormalise(latents)).sample.float()
        return video.clamp(-1.0, 1.0)

    @torch.no_grad()
    def decode_blocks(self, blocks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Block-wise decode of a causal VAE (see `VideoAutoencoder.decode_blocks`).

        Wan's VAE decodes one latent frame at a time with a `feat_cache` of every causal conv's last input
        frames, so carrying that cache from block to block gives exactly the all-at-once decode. A VAE with
        no such cache (LTX-2) decodes each later block with the previous block's last latent frame as left
        context and drops the pixel frame that context decodes to: the right frame count, and close to the
        all-at-once decode where the decoder's temporal receptive field is short, but not identical.
        """
        if hasattr(self.vae, "_cached_conv_counts") and hasattr(self.vae, "post_quant_conv"):
            yield from self._decode_blocks_with_feat_cache(blocks)
        else:
            yield from self._decode_blocks_with_left_context(blocks)

    def _decode_blocks_with_left_context(self, blocks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        context = None
        for block in blocks:
            if context is None:
                yield self.decode(block)
            else:
                yield self.decode(torch.cat([context, block.to(context.device)], dim=2))[:, :, 1:]
            context = block[:, :, -1:]

    def _decode_blocks_with_feat_cache(self, blocks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        # Mirrors AutoencoderKLWan._decode (diffusers 0.42) with the cache kept across calls instead of
        # cleared; post_quant_conv has a 1-frame kernel, so applying it per block is exact.
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        vae = self.vae
        if getattr(vae, "use_tiling", False):
            raise UserError("block-wise decode of the wan2.1 VAE does not support spatial tiling")
        feat_cache = [None] * vae._cached_conv_counts["decoder"]
        first = True
        for block in blocks:
            x = vae.post_quant_conv(self._denormalise(block))
            frames = []
            for i in range(x.shape[2]):
                frames.append(
                    vae.decoder(x[:, :, i : i + 1], feat_cache=feat_cache, feat_idx=[0], first_chunk=first)
                )
                first = False
            video = torch.cat(frames, dim=2)
            if vae.config.patch_size is not None:
                video = unpatchify(video, patch_size=vae.config.patch_size)
            yield video.float().clamp(-1.0, 1.0)


def _load_wan(path, device, dtype) -> DiffusersVideoAutoencoder:
    from diffusers import AutoencoderKLWan

    folder, subfolder = _vae_folder(path, "wan2.1")
    vae = AutoencoderKLWan.from_pretrained(folder, subfolder=subfolder, torch_dtype=dtype).to(device)
    cfg = vae.config
    t, s = cfg.scale_factor_temporal or 4, cfg.scale_factor_spatial or 8
    mean, std = torch.tensor(cfg.latents_mean), torch.tensor(cfg.latents_std)
    if mean.numel() != cfg.z_dim or std.numel() != cfg.z_dim:
        raise UserError(f"{folder}: latents_mean/latents_std must have z_dim={cfg.z_dim} entries")
    return DiffusersVideoAutoencoder("wan2.1", vae, (t, s, s), mean, std)


def _ltx2_stride(cfg) -> tuple[int, int, int]:
    """(t, h, w) compression of an LTX-2 VAE config: its explicit ratios when given (released configs give
    them), else counted from the down-sampling blocks (spatial / temporal / spatiotemporal halve their axes)."""
    spatial, temporal = cfg.patch_size, cfg.patch_size_t
    scaling = cfg.spatio_temporal_scaling
    if isinstance(scaling, bool):
        scaling = (scaling,) * len(cfg.downsample_type)
    for kind, used in zip(cfg.downsample_type, scaling, strict=False):
        if used:
            spatial *= 2 if kind in ("spatial", "spatiotemporal") else 1
            temporal *= 2 if kind in ("temporal", "spatiotemporal") else 1
    t = cfg.temporal_compression_ratio or temporal
    s = cfg.spatial_compression_ratio or spatial
    return t, s, s


def _load_ltx2(path, device, dtype) -> DiffusersVideoAutoencoder:
    from diffusers import AutoencoderKLLTX2Video

    folder, subfolder = _vae_folder(path, "ltx2")
    vae = AutoencoderKLLTX2Video.from_pretrained(folder, subfolder=subfolder, torch_dtype=dtype).to(device)
    return DiffusersVideoAutoencoder(
        "ltx2",
        vae,
        _ltx2_stride(vae.config),
        vae.latents_mean.cpu(),
        vae.latents_std.cpu(),
        vae.config.scaling_factor,
    )


AUTOENCODERS = ("space_to_depth", "wan2.1", "ltx2")


def build_autoencoder(
    name: str,
    path: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    **options,
) -> VideoAutoencoder:
    """Build an autoencoder by name. `space_to_depth` takes `stride=(t, h, w)` and no path; the others load
    from the local folder `path`."""
    if name == "space_to_depth":
        if path is not None:
            raise UserError("the space_to_depth autoencoder has no weights; do not pass a path")
        return SpaceToDepthAutoencoder(**options)
    if options:
        raise UserError(f"unknown options for the {name} autoencoder: {sorted(options)}")
    if name == "wan2.1":
        return _load_wan(path, device, dtype)
    if name == "ltx2":
        return _load_ltx2(path, device, dtype)
    raise UserError(f"unknown autoencoder {name!r}; choose one of {AUTOENCODERS}")
