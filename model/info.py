"""Sizes of a Linear DiT preset: parameters, tokens per video, block-AR cache bytes, forward FLOPs."""

from __future__ import annotations

import torch

from core.errors import UserError
from model.config import LinearDiTConfig
from model.embeddings import TIMESTEP_FEATURES
from model.linear_dit import LinearDiT


def count_parameters(config: LinearDiTConfig) -> int:
    """Exact parameter count, from a model built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = LinearDiT(config)
    return sum(p.numel() for p in model.parameters())


def latent_shape(
    config: LinearDiTConfig,
    frames: int,
    height: int,
    width: int,
    vae_stride: tuple[int, int, int] | None = None,
) -> tuple[int, int, int, int]:
    """(C, F, H, W) latent of a video of `frames` pixel frames at height×width.

    Causal video VAEs keep the first frame and compress the rest: F = 1 + (frames - 1) // stride_t.
    """
    st, sh, sw = vae_stride or config.vae_stride
    pt, ph, pw = config.patch_size
    if frames < 1 or (frames - 1) % st:
        raise UserError(f"frames={frames} must be 1 + a multiple of the VAE's temporal stride {st}")
    if height % (sh * ph) or width % (sw * pw):
        raise UserError(
            f"height×width {height}x{width} must be multiples of VAE stride × patch {sh * ph}x{sw * pw}"
        )
    latent_frames = 1 + (frames - 1) // st
    if latent_frames % pt:
        raise UserError(f"{latent_frames} latent frames not divisible by the temporal patch {pt}")
    return (config.in_channels, latent_frames, height // sh, width // sw)


def tokens_per_video(
    config: LinearDiTConfig,
    frames: int,
    height: int,
    width: int,
    vae_stride: tuple[int, int, int] | None = None,
) -> int:
    _, f, h, w = latent_shape(config, frames, height, width, vae_stride)
    pt, ph, pw = config.patch_size
    return (f // pt) * (h // ph) * (w // pw)


def cache_bytes_per_layer(
    config: LinearDiTConfig, latent_h: int, latent_w: int, batch: int = 1, dtype: torch.dtype = torch.float32
) -> int:
    """Bytes of one layer's block-AR state: Σ v·kᵀ (heads·d·d) and Σ k (heads·d), both fp32 always, plus the
    temporal conv's k//2 cached frames of D channels per token of one frame, in `dtype`."""
    _, ph, pw = config.patch_size
    tokens_per_frame = (latent_h // ph) * (latent_w // pw)
    attention = config.num_heads * config.head_dim * (config.head_dim + 1) * 4
    temporal = config.hidden_size * config.temporal_context * tokens_per_frame * dtype.itemsize
    return batch * (attention + temporal)


def forward_flops(config: LinearDiTConfig, latent_shape: tuple[int, int, int, int], text_len: int) -> float:
    """2·MACs of every matmul and conv of one forward pass on one sample (one timestep per sample)."""
    channels, frames, height, width = latent_shape
    pt, ph, pw = config.patch_size
    patch = pt * ph * pw
    n = (frames // pt) * (height // ph) * (width // pw)
    d, heads, hd = config.hidden_size, config.num_heads, config.head_dim
    cross = config.cross_attention_inner_dim
    hidden = config.ffn_hidden_size
    kernel = config.temporal_kernel_size

    embed = n * channels * patch * d + (TIMESTEP_FEATURES * d + d * d + d * 6 * d)
    caption = text_len * (config.caption_channels * d + d * d)
    self_attention = n * 4 * d * d + n * heads * (2 * hd * hd + hd)  # projections; Σvkᵀ and its read; Σk·q
    cross_attention = n * 2 * d * cross + text_len * 2 * d * cross + 2 * n * text_len * cross
    ffn = n * (d * 2 * hidden + 2 * hidden * 9 + hidden * d + d * d * kernel)
    output = n * d * patch * config.out_channels
    macs = embed + caption + config.depth * (self_attention + cross_attention + ffn) + output
    return 2.0 * macs


def describe(preset: str, frames: int, height: int, width: int, text_len: int = 300) -> str:
    """The text `svp model info PRESET` prints."""
    config = LinearDiTConfig.from_preset(preset)
    shape = latent_shape(config, frames, height, width)
    _, f, h, w = shape
    params = count_parameters(config)
    tokens = tokens_per_video(config, frames, height, width)
    per_layer = cache_bytes_per_layer(config, h, w)
    flops = forward_flops(config, shape, text_len)
    pt, ph, pw = config.patch_size
    lines = [
        f"preset               {preset}",
        f"parameters           {params:,}",
        f"width/depth/heads    D={config.hidden_size}, {config.depth} blocks, "
        f"{config.num_heads} heads x {config.head_dim}",
        f"video                {frames} frames at {height}x{width}",
        f"latent (C,F,H,W)     {shape}  (VAE stride {config.vae_stride}, patch {config.patch_size})",
        f"tokens per video     {tokens:,}  ({f // pt} x {h // ph} x {w // pw})",
        f"cache bytes/layer    {per_layer:,}  (fp32, batch 1; {per_layer * config.depth:,} for all "
        f"{config.depth} layers, whatever the video length)",
        f"forward FLOPs        {flops:.4g}  (one sample, {text_len} text tokens)",
    ]
    return "\n".join(lines)
