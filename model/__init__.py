"""The Linear DiT and everything around it (pure PyTorch; diffusers/transformers only as optional backends)."""

from model.cache import LinearDiTCache
from model.config import PRESETS, LinearDiTConfig
from model.linear_dit import LinearDiT

__all__ = ["PRESETS", "LinearDiT", "LinearDiTCache", "LinearDiTConfig"]
