"""Tiny random open_clip and aesthetic-MLP checkpoints for the curation scorer tests.

They are saved to files and loaded back through the production loaders (curation.clip_model,
curation.aesthetic), exactly as real ViT-L/14 and improved-aesthetic-predictor weights would be.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_tiny_clip(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a random tiny CLIP: (config .json, weights .safetensors)."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIP(**TINY_CLIP_CFG)
    cfg_path = folder / "tiny_clip.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CFG))
    weights = folder / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return cfg_path, weights


def save_tiny_aesthetic_mlp(path: Path, input_size: int = 32, seed: int = 0) -> Path:
    from curation.aesthetic import AestheticMLP

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = AestheticMLP(input_size).state_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
