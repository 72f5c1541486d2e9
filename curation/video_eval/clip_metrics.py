"""Metrics of a generated video that need local CLIP weights (and the aesthetic MLP for `aesthetic`).

- `clip_similarity`: mean over frames of the cosine between the frame's and the prompt's CLIP embeddings
  (CLIPScore without its ×100 and clamp): does the video show what was asked?
- `consistency`: VBench's subject/background-consistency formula on CLIP image features: per frame after the
  first, the mean of its cosine to the first frame and to the previous frame, averaged (1: nothing changes).
  VBench takes DINO features for the subject and CLIP for the background; with one CLIP this is the latter.
- `aesthetic`: the curation aesthetic scorer (`curation.aesthetic`) over the frames.
- `conditioning_similarity`: for image-to-video, the cosine between the first frame's and the image's CLIP
  embeddings.

Weights come from local paths, loaded by `curation.clip_model` as the curation scorers load them; without
them these metrics are skipped with one line (`availability`), never made up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from curation.aesthetic import AestheticConfig, AestheticScorer
from curation.clip_model import ClipEncoder, ClipModelSettings, load_clip, resolve_device

__all__ = ["ClipModelSettings", "ClipVideoMetrics", "availability", "consistency", "resolve_device"]


def availability(settings: ClipModelSettings, key_prefix: str = "eval.") -> str | None:
    """None when the CLIP metrics can run, else the one line saying why they are skipped. A path that is
    configured but missing is an error (FileNotFoundError), not a skip."""
    if settings.clip_checkpoint is None:
        return f"CLIP metrics skipped: no weights configured ({key_prefix}clip_checkpoint)"
    if not Path(settings.clip_checkpoint).exists():
        raise FileNotFoundError(f"{key_prefix}clip_checkpoint: not found: {settings.clip_checkpoint}")
    return None


VBENCH_SKIPPED = (
    "VBench dimensions skipped: vbench 0.1.5 pins transformers==4.33.2 and numpy<2, which cannot live beside "
    "svp's stack; run VBench in its own environment on the videos eval.json lists"
)


def vbench_availability() -> str:
    """Why VBench's own dimensions are not computed here (the package cannot be installed beside svp; its
    pins are quoted in VBENCH_SKIPPED, read from vbench 0.1.5's metadata)."""
    return VBENCH_SKIPPED


def consistency(embeddings: torch.Tensor) -> float:
    """VBench's consistency of unit frame embeddings (T, D): mean over t ≥ 1 of (cos(e_t, e_0) +
    cos(e_t, e_{t-1})) / 2."""
    if len(embeddings) < 2:
        raise ValueError("consistency needs two or more frames")
    to_first = embeddings[1:] @ embeddings[0]
    to_previous = (embeddings[1:] * embeddings[:-1]).sum(dim=1)
    return float(((to_first + to_previous) / 2).mean())


class ClipVideoMetrics:
    """The CLIP-based metrics of one video; the encoder (and aesthetic MLP) loaded once."""

    def __init__(self, settings: ClipModelSettings, aesthetic_mlp: str | Path | None = None):
        self.encoder: ClipEncoder = load_clip(settings)
        self.aesthetic = None
        if aesthetic_mlp is not None:
            config = AestheticConfig(**settings.model_dump(), mlp_checkpoint=Path(aesthetic_mlp))
            self.aesthetic = AestheticScorer(config)

    def embed(self, frames: np.ndarray) -> torch.Tensor:
        return self.encoder.embed_images(self.encoder.preprocess(np.asarray(frames, dtype=np.uint8)))

    def similarity(self, frames: np.ndarray, text: str) -> float:
        """Mean cosine between the frames and `text`."""
        return float((self.embed(frames) @ self.encoder.embed_texts([text])[0]).mean())

    def score(self, frames: np.ndarray, prompt: str, image: np.ndarray | None = None) -> dict[str, float]:
        frames = np.asarray(frames, dtype=np.uint8)
        embeddings = self.embed(frames)
        text = self.encoder.embed_texts([prompt])[0]
        out = {"clip_similarity": float((embeddings @ text).mean())}
        if len(frames) >= 2:
            out["consistency"] = consistency(embeddings)
        if self.aesthetic is not None:
            out["aesthetic"] = float(self.aesthetic.score_frame_sets([frames])[0])
        if image is not None:
            out["conditioning_similarity"] = float(self.embed(np.asarray(image)[None])[0] @ embeddings[0])
        return out
