"""`LinearDiTConfig`: every hyper-parameter of the Linear DiT, with the released SANA-Video presets.

Defaults follow diffusers' `SanaVideoTransformer3DModel` numerics (linear-attention eps 1e-15, cross-attention
q/k RMSNorm eps 1e-5, no timestep truncation), so that converted diffusers weights give the same output. The
official SANA code differs in three knobs, kept here as fields: eps 1e-8, cross-attention eps 1e-6 and integer
timestep truncation (`LinearDiTConfig.from_preset(name, **OFFICIAL_NUMERICS)`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from core.errors import UserError

# Switch a preset to the official SANA code's numerics instead of diffusers'.
OFFICIAL_NUMERICS: dict[str, Any] = {
    "linear_attention_eps": 1e-8,
    "cross_attention_qk_norm_eps": 1e-6,
    "timestep_truncation": True,
}

# What the model's output is (`LinearDiTConfig.prediction`); it always returns the velocity.
PREDICTIONS = ("velocity", "sample")


@dataclass
class LinearDiTConfig:
    in_channels: int = 16
    out_channels: int = 16
    num_heads: int = 20
    head_dim: int = 112
    depth: int = 20
    cross_attention_heads: int = 20
    cross_attention_head_dim: int = 112
    caption_channels: int = 2304
    mlp_ratio: float = 3.0
    patch_size: tuple[int, int, int] = (1, 2, 2)
    # Stride (t, h, w) of the autoencoder whose latents this model sees; only used to turn pixel sizes into
    # token counts (`model.info`) and by callers that pick the matching autoencoder.
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    norm_eps: float = 1e-6
    qk_norm_eps: float = 1e-5
    cross_attention_qk_norm_eps: float = 1e-5
    caption_norm_eps: float = 1e-5
    linear_attention_eps: float = 1e-15
    timestep_truncation: bool = False
    rope_theta: float = 10000.0
    rope_max_seq_len: int = 1024
    temporal_kernel_size: int = 3
    gradient_checkpointing: bool = False
    # With gradient_checkpointing: the share of blocks (the first round(fraction·depth)) whose activations are
    # recomputed in backward; the others keep theirs. Less than 1 trades memory for less recompute.
    checkpoint_fraction: float = 1.0
    # torch.compile each block on CUDA when gradients are on (fuses the casts, RoPE, norms, modulation and
    # gating passes); CPU runs and inference stay eager. Same math; bf16 results differ by rounding only.
    compile_blocks: bool = False
    # With compile_blocks: the share of a non-checkpointed block's activations the compiler may keep for
    # backward (torch._functorch `activation_memory_budget`); below 1 it recomputes the cheapest ops
    # (element-wise passes) instead of a whole block, between no checkpointing (1) and full checkpointing.
    compile_memory_budget: float = 1.0
    # When gradients are on, take the linear-attention core's fused Triton forward and backward on CUDA
    # (`model.kernels.linear_attention_training`) instead of the PyTorch path; CPU runs always take the latter.
    fused_attention_backward: bool = True
    # What the output projection predicts. "velocity": v = ε − x0, as SANA-Video and every released
    # checkpoint. "sample": the clean latents x0, turned into the velocity (x_t − x0)/σ before the model
    # returns (`model.flow.velocity_from_sample`; JiT, Li & He 2025). A small model on tokens of many values
    # (pixel-space latents: 8·8·3 a token) learns x0, which lies on the data's low-dimensional manifold, far
    # sooner than v, which carries every value of the token's noise. Loss and samplers stay as they are.
    prediction: str = "velocity"
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)
        self.vae_stride = tuple(int(s) for s in self.vae_stride)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise UserError(f"patch_size must be three positive ints (t, h, w), got {self.patch_size}")
        if len(self.vae_stride) != 3 or min(self.vae_stride) < 1:
            raise UserError(f"vae_stride must be three positive ints (t, h, w), got {self.vae_stride}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise UserError(f"head_dim must be even and >= 6 for the t/h/w RoPE split, got {self.head_dim}")
        if not 0.0 <= self.checkpoint_fraction <= 1.0:
            raise UserError(f"checkpoint_fraction must be in [0, 1], got {self.checkpoint_fraction}")
        if not 0.0 <= self.compile_memory_budget <= 1.0:
            raise UserError(f"compile_memory_budget must be in [0, 1], got {self.compile_memory_budget}")
        if self.temporal_kernel_size % 2 != 1:
            raise UserError(f"temporal_kernel_size must be odd, got {self.temporal_kernel_size}")
        if self.prediction not in PREDICTIONS:
            raise UserError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        for name in ("in_channels", "out_channels", "num_heads", "depth", "cross_attention_heads"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def ffn_hidden_size(self) -> int:
        # int() truncation, as both public implementations do.
        return int(self.mlp_ratio * self.hidden_size)

    @property
    def cross_attention_inner_dim(self) -> int:
        return self.cross_attention_heads * self.cross_attention_head_dim

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Channels of each head given to the (t, h, w) rotary axes, Wan-style: h = w = 2·(d // 6)."""
        hw = 2 * (self.head_dim // 6)
        return (self.head_dim - 2 * hw, hw, hw)

    @property
    def temporal_context(self) -> int:
        """Frames of the temporal conv's input that one block hands to the next (k // 2)."""
        return self.temporal_kernel_size // 2

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["patch_size"] = list(self.patch_size)
        out["vae_stride"] = list(self.vae_stride)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearDiTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown LinearDiTConfig keys: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> LinearDiTConfig:
        if name not in PRESETS:
            raise UserError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        values = dict(PRESETS[name], name=name)
        values.update(overrides)
        return cls.from_dict(values)


PRESETS: dict[str, dict[str, Any]] = {
    # Runs forward+backward on a CPU in well under a second at latent (1, 48, 8, 32, 32). Its latents come from
    # the parameter-free space-to-depth autoencoder (stride 1x4x4 on RGB -> 3·4·4 = 48 channels).
    "tiny": {
        "in_channels": 48,
        "out_channels": 48,
        "num_heads": 2,
        "head_dim": 32,
        "depth": 2,
        "cross_attention_heads": 2,
        "cross_attention_head_dim": 32,
        "caption_channels": 64,
        "mlp_ratio": 2.0,
        "patch_size": (1, 2, 2),
        "vae_stride": (1, 4, 4),
        "rope_max_seq_len": 1024,
    },
    # Wan2.1 VAE latents (16 channels, stride 4x8x8), patch 1x2x2: `SanaMSVideo_2000M_P2_D20`.
    "sana-video-2b-480p": {
        "in_channels": 16,
        "out_channels": 16,
        "patch_size": (1, 2, 2),
        "vae_stride": (4, 8, 8),
    },
    # LTX-2 VAE latents (128 channels, stride 8x32x32), patch 1x1x1: `SanaMSVideo_2000M_P1_D20`.
    "sana-video-2b-720p": {
        "in_channels": 128,
        "out_channels": 128,
        "patch_size": (1, 1, 1),
        "vae_stride": (8, 32, 32),
    },
}
