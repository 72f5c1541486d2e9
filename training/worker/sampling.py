"""Videos from the training's models: sample videos during a stage, and `svp generate` from a stage export.

A stage export (see `training.worker.checkpoints`) carries in `stage.json` the autoencoder, text encoder, frame rate
and resolution the stage trained with, so generating from it needs only the folder and a prompt.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from training.data.caption_template import caption_conditioning

if TYPE_CHECKING:
    from training.config import StageConfig
    from training.worker.step import StageStep

DEFAULT_FPS = 16.0


def export_extra(stage: StageConfig) -> dict[str, Any]:
    """What `generate_from_export` needs to know about the stage, stored in the export's stage.json."""
    resolved = stage.resolved()
    bucket = stage.buckets[0]
    return {
        "autoencoder": resolved["autoencoder"],
        "text_encoder": resolved["text_encoder"],
        "fps": stage.target_fps or DEFAULT_FPS,
        "height": bucket.height,
        "width": bucket.width,
        "chunk_sizes": stage.chunk_sizes,
        "seed": stage.seed,
        "caption": caption_conditioning(stage.data),  # the captions' template, applied by `svp generate`
    }


def _inference_context(module: torch.nn.Module):
    param = next(module.parameters())
    if param.dtype == torch.float32:
        return contextlib.nullcontext()
    # bf16 training weights: let autocast pick the matmul dtype instead of casting a 2B model to fp32.
    return torch.autocast(device_type=param.device.type, dtype=param.dtype)


@contextlib.contextmanager
def inference_mode(module: torch.nn.Module):
    """The training module set up to generate: in eval mode (its mode restored after), under autocast when
    its weights are not fp32. Sample videos and the evaluation during training (`live_eval`) run in it."""
    was_training = module.training
    module.eval()
    try:
        with _inference_context(module):
            yield
    finally:
        module.train(was_training)


def render_sample(
    stage: StageConfig, step_math: StageStep, module: torch.nn.Module, path: Path | None
) -> Path | None:
    """A short video of `stage.sample.prompt` with the current weights (block-AR when the stage is), written
    to `path`; with `path` None it is rendered and not written (the ranks that share a render with rank 0)."""
    from model.generate import generate_video, save_video

    spec = stage.sample
    bucket = stage.buckets[0]
    block = stage.chunk_sizes[0] if stage.chunk_sizes else None
    with inference_mode(module):
        frames = generate_video(
            module,
            step_math.autoencoder,
            step_math.text_encoder,
            spec.prompt,
            num_frames=spec.num_frames,
            height=bucket.height,
            width=bucket.width,
            steps=spec.steps,
            seed=stage.seed,
            block_frames=block,
        )
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_video(frames, path, fps=stage.target_fps or DEFAULT_FPS)


# `svp generate` lives in training.inference.generation; re-exported here, where callers have always found it.
from training.inference.generation import generate_from_export  # noqa: E402, F401
