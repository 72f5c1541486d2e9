"""Tiny random open_clip and aesthetic-MLP checkpoints for the curation scorer tests.

They are saved to files and loaded back through the production loaders (curation.clip_model,
curation.aesthetic), exactly as real ViT-L/14 and improved-aesthetic-predictor weights would be.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.random_weights import write_aesthetic_mlp, write_clip, write_qwen2_5_vl


def save_tiny_clip(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a random tiny CLIP: (config .json, weights .safetensors)."""
    name, weights = write_clip(folder, "tiny", seed=seed)
    return Path(name), weights


def save_tiny_aesthetic_mlp(path: Path, input_size: int = 32, seed: int = 0) -> Path:
    return write_aesthetic_mlp(path, input_size, seed)


def save_tiny_qwen2_5_vl(folder: Path, seed: int = 0) -> Path:
    """A random one-layer Qwen2.5-VL with a word-level tokenizer, saved with save_pretrained (offline)."""
    return write_qwen2_5_vl(folder, "tiny", seed=seed)
