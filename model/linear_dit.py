"""`LinearDiT`: SANA-Video's Block Linear DiT, with bidirectional, block-causal and cached block-AR modes.

    latents (B, C, F, H, W) --Conv3d patchify--> tokens (B, N, D) in (f, h, w) order
    timesteps --AdaLN-single--> t0 (6D, modulates every block), t_emb (D, drives the output layer)
    caption --Linear, GELU, Linear, RMSNorm--> keys/values of every block's cross-attention
    blocks --> LayerNorm·(1+scale)+shift from t_emb --> Linear --> unpatchify --> velocity (B, C, F, H, W)

Timesteps are (B,) or (B, F) with one value per latent frame; the modulation then varies per frame.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.attention import caption_attention_bias
from model.block import LinearDiTBlock
from model.cache import LinearDiTCache
from model.config import LinearDiTConfig
from model.embeddings import AdaLNSingle, CaptionProjection
from model.flow import velocity_from_sample
from model.norms import RMSNorm, modulated_layer_norm
from model.rope import rope_tables


class _CheckpointedBlock(nn.Module):
    """A block whose activations are recomputed in backward. A module (not a closure) so that torch.compile
    traces the checkpoint as one region and reuses one compiled graph for every block of the same shape."""

    def __init__(self, block: LinearDiTBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args):
        return checkpoint(self.block, *args, use_reentrant=False)


def _with_memory_budget(compiled: Callable, budget: float) -> Callable:
    """Run `compiled` with torch's activation memory budget set, so (re)compiles partition under it."""

    def call(*args):
        with torch._functorch.config.patch(activation_memory_budget=budget):
            return compiled(*args)

    return call


# (block, checkpointed) -> compiled callable, for the life of the process (compile_blocks is a training
# knob: one model per process). Kept outside the module so state_dict keys, deepcopy and pickling are unchanged.
_COMPILED: dict[tuple[LinearDiTBlock, bool], Callable] = {}


def _block_call(block: LinearDiTBlock, checkpointed: bool, compiled: bool, memory_budget: float) -> Callable:
    if not compiled:
        return functools.partial(checkpoint, block, use_reentrant=False) if checkpointed else block
    inference = not torch.is_grad_enabled()
    key = (block, "inference" if inference else checkpointed)
    if key not in _COMPILED:
        if inference:
            # Static shapes: one graph per token grid (bidirectional clip, block-AR block), shared by all
            # blocks, never a dynamic-shape graph.
            _COMPILED[key] = torch.compile(block, dynamic=False)
        elif checkpointed:
            _COMPILED[key] = torch.compile(_CheckpointedBlock(block))
        else:
            _COMPILED[key] = _with_memory_budget(torch.compile(block), memory_budget)
    return _COMPILED[key]


class LinearDiT(nn.Module):
    def __init__(self, config: LinearDiTConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.patch_embedding = nn.Conv3d(
            config.in_channels, dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.time_embed = AdaLNSingle(dim)
        self.caption_projection = CaptionProjection(config.caption_channels, dim)
        self.caption_norm = RMSNorm(dim, eps=config.caption_norm_eps)
        self.blocks = nn.ModuleList(LinearDiTBlock(config) for _ in range(config.depth))
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, math.prod(config.patch_size) * config.out_channels)
        self.compile_inference = False

    def enable_inference_compile(self, enabled: bool = True) -> LinearDiT:
        """Under `no_grad` on CUDA, run every block `torch.compile`d (static shapes: compiled on the first call
        of each token grid, then reused by every block, step and block-AR block of that grid). A runtime switch,
        not a config field: it changes speed, not the model. Returns self."""
        self.compile_inference = enabled
        if enabled:
            # Bidirectional clips, block-AR blocks and cache updates are distinct graphs of one block's code.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        return self

    # ----------------------------------------------------------------------------------------------- public

    def forward(
        self,
        latents: torch.Tensor,
        text: torch.Tensor,
        timesteps: torch.Tensor | float,
        text_mask: torch.Tensor | None = None,
        chunk_sizes: list[int] | None = None,
    ) -> torch.Tensor:
        """Velocity (B, C, F, H, W). `chunk_sizes` (latent frames per chunk, summing to F) switches on
        block-causal attention: chunk c sees every token of chunks ≤ c, and the temporal conv never looks
        into the next chunk."""
        chunk_frames = None
        if chunk_sizes is not None:
            chunk_frames = self._chunk_token_frames(list(chunk_sizes), latents.shape[2])
        return self._run(latents, text, timesteps, text_mask, chunk_frames, frame_offset=0)

    def new_cache(
        self,
        batch_size: int,
        latent_hw: tuple[int, int] | None = None,
        device: torch.device | str | None = None,
    ) -> LinearDiTCache:
        """An empty block-AR cache. With `latent_hw` (latent H, W) every tensor is allocated now; without it
        the temporal-conv slots are allocated by the first `update_cache`."""
        cfg = self.config
        param = next(self.parameters())
        device = param.device if device is None else torch.device(device)
        heads, dim = cfg.num_heads, cfg.head_dim
        depth = cfg.depth
        cache = LinearDiTCache(
            kv=[torch.zeros(batch_size, heads, dim, dim, device=device) for _ in range(depth)],
            k_sum=[torch.zeros(batch_size, heads, dim, device=device) for _ in range(depth)],
            temporal=[None] * depth,
        )
        if latent_hw is not None:
            token_hw = self._token_hw(*latent_hw)
            cache.token_hw = token_hw
            shape = (batch_size, cfg.temporal_context, token_hw[0] * token_hw[1], cfg.hidden_size)
            cache.temporal = [torch.zeros(shape, device=device, dtype=param.dtype) for _ in range(depth)]
        return cache

    def forward_block(
        self,
        latents_block: torch.Tensor,
        text: torch.Tensor,
        timesteps: torch.Tensor | float,
        cache: LinearDiTCache,
        frame_offset: int,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity of one block attending to itself and to everything folded into `cache` (not changed).
        `frame_offset` is the block's first absolute latent frame (must equal `cache.num_frames`)."""
        self._check_cache(latents_block, cache, frame_offset)
        return self._run(latents_block, text, timesteps, text_mask, None, frame_offset, cache=cache)

    @torch.no_grad()
    def update_cache(
        self,
        clean_block: torch.Tensor,
        text: torch.Tensor,
        cache: LinearDiTCache,
        frame_offset: int,
        text_mask: torch.Tensor | None = None,
    ) -> None:
        """Run the clean block at t = 0 and fold it into `cache` in place (running sums, last frames).

        Runs without autograd: the cache is inference state (block-AR training uses `chunk_sizes`)."""
        self._check_cache(clean_block, cache, frame_offset)
        zeros = torch.zeros(clean_block.shape[0], device=clean_block.device)
        self._run(clean_block, text, zeros, text_mask, None, frame_offset, cache=cache, store=True)
        cache.num_frames += clean_block.shape[2]
        cache.token_hw = self._token_hw(*clean_block.shape[3:])

    # ---------------------------------------------------------------------------------------------- helpers

    def _run(
        self,
        latents: torch.Tensor,
        text: torch.Tensor,
        timesteps: torch.Tensor | float,
        text_mask: torch.Tensor | None,
        chunk_frames: list[int] | None,
        frame_offset: int,
        cache: LinearDiTCache | None = None,
        store: bool = False,
    ) -> torch.Tensor:
        cfg = self.config
        batch = latents.shape[0]
        grid = self._token_grid(latents)
        rope = rope_tables(
            grid,
            cfg.rope_split,
            cfg.rope_theta,
            cfg.rope_max_seq_len,
            frame_offset // cfg.patch_size[0],
            device=latents.device,
        )
        x = self.patch_embedding(latents).flatten(2).transpose(1, 2)
        t0, t_emb = self.time_embed(
            self._timestep_rows(timesteps, batch, latents.shape[2], x.device), x.dtype
        )
        t0, t_emb = t0.view(batch, -1, t0.shape[-1]), t_emb.view(batch, -1, t_emb.shape[-1])
        if text.shape[0] != batch or text.shape[-1] != cfg.caption_channels:
            raise ValueError(f"text must be (B={batch}, L, {cfg.caption_channels}), got {tuple(text.shape)}")
        text = self.caption_norm(self.caption_projection(text))
        bias = caption_attention_bias(text_mask, x.dtype)

        checkpointed = 0
        if cfg.gradient_checkpointing and cache is None and torch.is_grad_enabled():
            checkpointed = round(cfg.checkpoint_fraction * len(self.blocks))
        # Training: `compile_blocks`; inference (no grad): `enable_inference_compile`.
        grad = torch.is_grad_enabled()
        compiled = x.is_cuda and (cfg.compile_blocks if grad else self.compile_inference)
        for index, block in enumerate(self.blocks):
            past = cache.layer_state(index) if cache is not None else None
            call = _block_call(block, index < checkpointed, compiled, cfg.compile_memory_budget)
            x, state = call(x, text, bias, t0, grid, rope, chunk_frames, past)
            if store:
                cache.store_layer(index, *state)

        shift, scale = (self.scale_shift_table[None, None] + t_emb[:, :, None]).unbind(dim=2)
        x = self._unpatchify(self.proj_out(modulated_layer_norm(x, shift, scale, cfg.norm_eps)), grid)
        if cfg.prediction == "sample":
            return velocity_from_sample(latents, x, timesteps)
        return x

    def _token_hw(self, height: int, width: int) -> tuple[int, int]:
        _, ph, pw = self.config.patch_size
        if height % ph or width % pw:
            raise ValueError(f"latent height/width {height}x{width} not divisible by patch {ph}x{pw}")
        return height // ph, width // pw

    def _token_grid(self, latents: torch.Tensor) -> tuple[int, int, int]:
        cfg = self.config
        if latents.ndim != 5 or latents.shape[1] != cfg.in_channels:
            raise ValueError(f"latents must be (B, {cfg.in_channels}, F, H, W), got {tuple(latents.shape)}")
        frames = latents.shape[2]
        if frames % cfg.patch_size[0]:
            raise ValueError(f"latent frames {frames} not divisible by temporal patch {cfg.patch_size[0]}")
        return (frames // cfg.patch_size[0], *self._token_hw(*latents.shape[3:]))

    def _chunk_token_frames(self, chunk_sizes: list[int], frames: int) -> list[int]:
        pt = self.config.patch_size[0]
        if not chunk_sizes or min(chunk_sizes) < 1 or sum(chunk_sizes) != frames:
            raise ValueError(
                f"chunk_sizes {chunk_sizes} must be positive and sum to the {frames} latent frames"
            )
        if any(size % pt for size in chunk_sizes):
            raise ValueError(f"chunk_sizes {chunk_sizes} must be multiples of the temporal patch {pt}")
        return [size // pt for size in chunk_sizes]

    def _timestep_rows(
        self, timesteps: torch.Tensor | float, batch: int, frames: int, device: torch.device
    ) -> torch.Tensor:
        """(B,) or (B, F latent frames) -> flat (B·R,) with R = 1 or the number of token frames."""
        t = torch.as_tensor(timesteps, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.ndim == 1:
            if t.shape[0] != batch:
                raise ValueError(f"timesteps must be (B={batch},) or (B, {frames}), got {tuple(t.shape)}")
            t = t[:, None]
        elif t.ndim == 2 and t.shape == (batch, frames):
            pt = self.config.patch_size[0]
            if pt > 1:
                grouped = t.view(batch, frames // pt, pt)
                if not torch.equal(grouped, grouped[:, :, :1].expand_as(grouped)):
                    raise ValueError(f"per-frame timesteps must be equal within each temporal patch of {pt}")
                t = grouped[:, :, 0]
        else:
            raise ValueError(f"timesteps must be (B={batch},) or (B, {frames}), got {tuple(t.shape)}")
        if self.config.timestep_truncation:
            t = t.long()
        return t.float().flatten()

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        pt, ph, pw = self.config.patch_size
        frames, height, width = grid
        x = x.reshape(x.shape[0], frames, height, width, pt, ph, pw, -1)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], x.shape[1], frames * pt, height * ph, width * pw)

    def _check_cache(self, latents: torch.Tensor, cache: LinearDiTCache, frame_offset: int) -> None:
        _, height, width = self._token_grid(latents)
        if frame_offset % self.config.patch_size[0]:
            raise ValueError(f"frame_offset {frame_offset} not a multiple of the temporal patch")
        cache.check_block(latents.shape[0], (height, width), frame_offset)
