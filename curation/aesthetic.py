"""Aesthetic score: open_clip image embeddings of a clip's sampled frames through a LAION-style MLP.

The MLP has the layout of christophschuhmann/improved-aesthetic-predictor (`sac+logos+ava1-l14-linearMSE.pth`):
Linear(D→1024), Dropout, Linear(1024→128), Dropout, Linear(128→64), Dropout, Linear(64→16), Linear(16→1),
state-dict keys `layers.0.weight` … `layers.7.bias`, applied to L2-normalised CLIP image embeddings (D = 768
for ViT-L/14). The clip's score is the mean (or min) of its frames' scores. Without weights the scorer is
skipped and says why; it never makes up a score.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from core.errors import UserError
from curation.clip_model import (
    ClipModelSettings,
    embed_frame_sets,
    frames_of_batch,
    load_clip,
    load_weights,
    resolve_device,
)

log = logging.getLogger(__name__)

SCORE_COLUMN = "aesthetic_score"


class AestheticConfig(ClipModelSettings):
    """`aesthetic:` section of the curation config."""

    mlp_checkpoint: Path | None = None
    frame_reduce: Literal["mean", "min"] = "mean"


class AestheticMLP(nn.Module):
    """The improved-aesthetic-predictor head (dropout is inactive at inference, kept for the key layout)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


def load_aesthetic_mlp(path: str | Path) -> AestheticMLP:
    """The MLP from a `.pth`/`.safetensors` state dict; its input size is read from `layers.0.weight`."""
    state = load_weights(path)
    if "layers.0.weight" not in state:
        raise UserError(f"{path}: not an aesthetic MLP state dict (no 'layers.0.weight')")
    mlp = AestheticMLP(int(state["layers.0.weight"].shape[1]))
    try:
        mlp.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path}: aesthetic MLP weights do not fit the predictor layout: {err}") from None
    return mlp.eval()


def availability(config: AestheticConfig) -> str | None:
    """None when the scorer can run; otherwise the one-line reason it is skipped.

    A path that is configured but missing is a user error, not a skip: it raises FileNotFoundError."""
    for key in ("clip_checkpoint", "mlp_checkpoint"):
        value = getattr(config, key)
        if value is None:
            return f"aesthetic scorer skipped: no weights configured (aesthetic.{key})"
        if not Path(value).exists():
            raise FileNotFoundError(f"aesthetic.{key}: not found: {value}")
    return None


class AestheticScorer:
    """Ray Data callable class: adds `aesthetic_score` (float, NaN for a row without frames)."""

    def __init__(self, config: AestheticConfig):
        reason = availability(config)
        if reason:
            raise UserError(reason)
        self.config = config
        self.encoder = load_clip(config)
        self.mlp = load_aesthetic_mlp(config.mlp_checkpoint).to(resolve_device(config.device))
        clip_dim = self.encoder.embed_dim
        if clip_dim != self.mlp.input_size:
            raise UserError(
                f"aesthetic.mlp_checkpoint expects {self.mlp.input_size}-d embeddings but "
                f"aesthetic.clip_model gives {clip_dim}-d"
            )

    @torch.inference_mode()
    def score_frame_sets(self, frame_sets: list[np.ndarray]) -> np.ndarray:
        embeddings = embed_frame_sets(self.encoder, frame_sets)
        reduce = torch.mean if self.config.frame_reduce == "mean" else torch.amin
        scores = np.full(len(frame_sets), np.nan, dtype=np.float64)
        for i, emb in enumerate(embeddings):
            if len(emb):
                per_frame = self.mlp(emb.to(next(self.mlp.parameters()).device)).float().cpu()
                scores[i] = float(reduce(per_frame))
        return scores

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch[SCORE_COLUMN] = self.score_frame_sets(frames_of_batch(batch))
        return batch
