"""Checkpoint layouts: ours <-> diffusers `SanaVideoTransformer3DModel` <-> official SANA-Video (`SanaMSVideo`).

Our parameter names follow diffusers' closely; both maps below are lists of name fragments, applied in order
(ours -> theirs) or reversed. The official layout also fuses self-attention q/k/v into `attn.qkv` and the
cross-attention k/v into `cross_attn.kv_linear`. diffusers is imported lazily: the model never needs it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from model.config import PRESETS, LinearDiTConfig
from model.linear_dit import LinearDiT
from model.pretrained import model_from_state_dict

log = logging.getLogger(__name__)

# (our fragment, their fragment); a leading "^" anchors the fragment at the start of the key.
DIFFUSERS_RENAMES: list[tuple[str, str]] = [
    ("^blocks.", "transformer_blocks."),
    ("^time_embed.linear_1.", "time_embed.emb.timestep_embedder.linear_1."),
    ("^time_embed.linear_2.", "time_embed.emb.timestep_embedder.linear_2."),
    ("^time_embed.modulation.", "time_embed.linear."),
    (".to_out.", ".to_out.0."),
]

OFFICIAL_RENAMES: list[tuple[str, str]] = [
    ("^patch_embedding.", "x_embedder.proj."),
    ("^time_embed.linear_1.", "t_embedder.mlp.0."),
    ("^time_embed.linear_2.", "t_embedder.mlp.2."),
    ("^time_embed.modulation.", "t_block.1."),
    ("^caption_projection.linear_1.", "y_embedder.y_proj.fc1."),
    ("^caption_projection.linear_2.", "y_embedder.y_proj.fc2."),
    ("^caption_norm.", "attention_y_norm."),
    ("^scale_shift_table", "final_layer.scale_shift_table"),
    ("^proj_out.", "final_layer.linear."),
    (".attn1.norm_q.", ".attn.q_norm."),
    (".attn1.norm_k.", ".attn.k_norm."),
    (".attn1.to_out.", ".attn.proj."),
    (".attn2.to_q.", ".cross_attn.q_linear."),
    (".attn2.norm_q.", ".cross_attn.q_norm."),
    (".attn2.norm_k.", ".cross_attn.k_norm."),
    (".attn2.to_out.", ".cross_attn.proj."),
    (".ff.conv_inverted.", ".mlp.inverted_conv.conv."),
    (".ff.conv_depth.", ".mlp.depth_conv.conv."),
    (".ff.conv_point.", ".mlp.point_conv.conv."),
    (".ff.conv_temp.", ".mlp.t_conv."),
]

# Official tensors that are several of ours concatenated along dim 0: (official suffix, our suffixes).
OFFICIAL_FUSED: list[tuple[str, tuple[str, ...]]] = [
    (".attn.qkv.weight", (".attn1.to_q.weight", ".attn1.to_k.weight", ".attn1.to_v.weight")),
    (".cross_attn.kv_linear.weight", (".attn2.to_k.weight", ".attn2.to_v.weight")),
    (".cross_attn.kv_linear.bias", (".attn2.to_k.bias", ".attn2.to_v.bias")),
]

# Official entries with no counterpart in the model: the CFG null caption, an unused absolute position
# buffer, and the loss-weighting head.
OFFICIAL_DROPPED = re.compile(r"^(y_embedder\.y_embedding|pos_embed|logvar_linear\..*)$")


def _rename(key: str, renames: list[tuple[str, str]], reverse: bool = False) -> str:
    for ours, theirs in renames:
        src, dst = (theirs, ours) if reverse else (ours, theirs)
        if src.startswith("^"):
            if key.startswith(src[1:]):
                key = dst.lstrip("^") + key[len(src) - 1 :]
        else:
            key = key.replace(src, dst.lstrip("^"))
    return key


def _require_velocity(config: LinearDiTConfig, target: str) -> None:
    # The other code bases have no x0 head: their samplers would read our x0 as a velocity.
    if config.prediction != "velocity":
        raise UserError(f"{target} predicts the velocity; this model predicts {config.prediction!r}")


def _vae_stride_for(in_channels: int, patch_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """The VAE stride of the preset with the same latent space, else the dataclass default."""
    for values in PRESETS.values():
        if values["in_channels"] == in_channels and tuple(values["patch_size"]) == tuple(patch_size):
            return tuple(values["vae_stride"])
    return LinearDiTConfig.vae_stride


# ------------------------------------------------------------------------------------------------ diffusers


def config_from_diffusers(diffusers_config: dict[str, Any], **overrides: Any) -> LinearDiTConfig:
    cfg = dict(diffusers_config)
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    unsupported = {
        "qk_norm": ("rms_norm_across_heads", cfg.get("qk_norm")),
        "guidance_embeds": (False, cfg.get("guidance_embeds", False)),
        "attention_bias": (False, cfg.get("attention_bias", False)),
        "norm_elementwise_affine": (False, cfg.get("norm_elementwise_affine", False)),
        "cross_attention_dim": (inner, cfg.get("cross_attention_dim")),
    }
    for name, (wanted, got) in unsupported.items():
        if got != wanted:
            raise UserError(f"diffusers config {name}={got!r} is not supported (need {wanted!r})")
    patch = tuple(cfg["patch_size"])
    values = {
        "in_channels": cfg["in_channels"],
        "out_channels": cfg.get("out_channels") or cfg["in_channels"],
        "num_heads": cfg["num_attention_heads"],
        "head_dim": cfg["attention_head_dim"],
        "depth": cfg["num_layers"],
        "cross_attention_heads": cfg["num_cross_attention_heads"],
        "cross_attention_head_dim": cfg["cross_attention_head_dim"],
        "caption_channels": cfg["caption_channels"],
        "mlp_ratio": float(cfg["mlp_ratio"]),
        "patch_size": patch,
        "vae_stride": _vae_stride_for(cfg["in_channels"], patch),
        "norm_eps": cfg.get("norm_eps", 1e-6),
        "rope_max_seq_len": cfg.get("rope_max_seq_len", 1024),
    }
    values.update(overrides)
    return LinearDiTConfig(**values)


def diffusers_config(config: LinearDiTConfig) -> dict[str, Any]:
    return {
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.head_dim,
        "num_layers": config.depth,
        "num_cross_attention_heads": config.cross_attention_heads,
        "cross_attention_head_dim": config.cross_attention_head_dim,
        "cross_attention_dim": config.hidden_size,
        "caption_channels": config.caption_channels,
        "mlp_ratio": config.mlp_ratio,
        "attention_bias": False,
        "patch_size": tuple(config.patch_size),
        "norm_elementwise_affine": False,
        "norm_eps": config.norm_eps,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": config.rope_max_seq_len,
    }


def from_diffusers(module: torch.nn.Module, **overrides: Any) -> LinearDiT:
    """Our model with the weights of a diffusers `SanaVideoTransformer3DModel` (copied, same dtype)."""
    config = config_from_diffusers(dict(module.config), **overrides)
    state = {
        _rename(key, DIFFUSERS_RENAMES, reverse=True): tensor.detach().clone()
        for key, tensor in module.state_dict().items()
        if not key.startswith("rope.")
    }
    return model_from_state_dict(config, state, "diffusers SanaVideoTransformer3DModel")


def to_diffusers(model: LinearDiT) -> torch.nn.Module:
    """A diffusers `SanaVideoTransformer3DModel` with this model's weights (copied, same dtype and device)."""
    from diffusers import SanaVideoTransformer3DModel

    cfg = model.config
    _require_velocity(cfg, "diffusers' SanaVideoTransformer3DModel")
    state = {_rename(k, DIFFUSERS_RENAMES): t.detach().clone() for k, t in model.state_dict().items()}
    # Built on the meta device to skip a random init; only the RoPE tables are buffers, rebuilt below.
    with torch.device("meta"):
        module = SanaVideoTransformer3DModel(**diffusers_config(cfg))
    module.load_state_dict(state, strict=True, assign=True)
    module.rope = type(module.rope)(cfg.head_dim, cfg.patch_size, cfg.rope_max_seq_len, cfg.rope_theta)
    return module.to(next(model.parameters()).device)


# ------------------------------------------------------------------------------------------------- official


def official_state_dict(model: LinearDiT) -> dict[str, torch.Tensor]:
    """The model's weights under the official SANA-Video (`SanaMSVideo`) key names."""
    _require_velocity(model.config, "the official SanaMSVideo")
    ours = {k: t.detach() for k, t in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for index in range(model.config.depth):
        prefix = f"blocks.{index}"
        for fused, parts in OFFICIAL_FUSED:
            out[prefix + fused] = torch.cat([ours.pop(prefix + part) for part in parts], dim=0)
    for key, tensor in ours.items():
        out[_rename(key, OFFICIAL_RENAMES)] = tensor.clone()
    return out


def from_official_state_dict(state_dict: dict[str, torch.Tensor], config: LinearDiTConfig) -> LinearDiT:
    """Our model from official SANA-Video weights (drops the null caption, `pos_embed`, `logvar_linear`)."""
    ours: dict[str, torch.Tensor] = {}
    dropped = []
    for key, tensor in state_dict.items():
        if OFFICIAL_DROPPED.match(key):
            dropped.append(key)
            continue
        fused = next(((f, parts) for f, parts in OFFICIAL_FUSED if key.endswith(f)), None)
        if fused is not None and key.startswith("blocks."):
            prefix = key[: -len(fused[0])]
            if tensor.shape[0] % len(fused[1]):
                raise ValueError(f"official checkpoint: key {key} cannot be split into {len(fused[1])}")
            for part, piece in zip(fused[1], tensor.chunk(len(fused[1]), dim=0), strict=True):
                ours[prefix + part] = piece.clone()
        else:
            ours[_rename(key, OFFICIAL_RENAMES, reverse=True)] = tensor.clone()
    if dropped:
        log.info("official checkpoint: dropped %s", ", ".join(sorted(dropped)))
    return model_from_state_dict(config, ours, "official checkpoint")


def _unwrap(checkpoint: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    for wrapper in ("state_dict", "model"):
        if wrapper in checkpoint and isinstance(checkpoint[wrapper], dict):
            checkpoint = checkpoint[wrapper]
            break
    if not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise UserError(f"{path}: not a state dict of tensors (after unwrapping state_dict/model)")
    return checkpoint


def load_official(path: str | Path, config: LinearDiTConfig) -> LinearDiT:
    """Load an official `.pth` (optionally wrapped in `state_dict`/`model`) or `.safetensors` checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
    return from_official_state_dict(state, config)


def save_official(model: LinearDiT, path: str | Path) -> None:
    """Write the official layout: `.safetensors` as is, anything else as a `.pth` with a `state_dict` wrapper."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: t.contiguous() for k, t in official_state_dict(model).items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        from core.atomic import atomic_write

        atomic_write(path, lambda tmp: save_file(state, str(tmp)))  # the umask's mode, not safetensors' 0600
    else:
        torch.save({"state_dict": state}, path)
