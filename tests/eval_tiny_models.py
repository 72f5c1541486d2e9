"""A tiny open_clip that knows two captions: trained for a few contrastive steps so that a red frame is
closer to "a red square" than to "a blue square" (and the other way round), saved to files and loaded back
through `curation.clip_model` as real CLIP weights are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from curation_tiny_models import save_tiny_clip

from curation import clip_model
from curation.clip_model import ClipModelSettings

CAPTIONS = {"a red square": (220, 30, 30), "a blue square": (30, 30, 220)}


def colour_frames(rgb: tuple[int, int, int], n: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    """`n` frames of a square of colour `rgb` on grey, with a little noise (so no frame is exactly flat)."""
    rng = np.random.default_rng(seed)
    frames = np.full((n, size, size, 3), 128, dtype=np.int16)
    frames[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = rgb
    frames += rng.integers(-8, 9, size=frames.shape)
    return np.clip(frames, 0, 255).astype(np.uint8)


def save_trained_tiny_clip(folder: Path, steps: int = 12) -> ClipModelSettings:
    """A tiny CLIP trained on CAPTIONS' colour frames; returns the settings that load it."""
    from safetensors.torch import save_file

    cfg, weights = save_tiny_clip(folder)
    settings = ClipModelSettings(clip_model=str(cfg), clip_checkpoint=weights, device="cpu")
    encoder = clip_model.load_clip(settings)
    model = encoder.model.train()
    texts = encoder.tokenizer(list(CAPTIONS))
    pixels = torch.cat(
        [encoder.preprocess(colour_frames(rgb, n=1, seed=i)) for i, rgb in enumerate(CAPTIONS.values())]
    )
    torch.manual_seed(0)
    # The vocabulary's embedding stays fixed: its gradient is most of a step's cost and not needed here.
    trained = [p for name, p in model.named_parameters() if "token_embedding" not in name]
    optimizer = torch.optim.Adam(trained, lr=2e-3)
    for _ in range(steps):
        image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(texts), dim=-1)
        logits = 10.0 * image @ text.T
        target = torch.arange(len(CAPTIONS))
        loss = torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(
            logits.T, target
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights))
    clip_model._load_clip_cached.cache_clear()  # the next load reads the trained weights from the file
    return settings
