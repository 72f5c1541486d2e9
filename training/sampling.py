"""Videos from the training's models: sample videos during a stage, and `svp generate` from a stage export.

A stage export (see `training.checkpoints`) carries in `stage.json` the autoencoder, text encoder, frame rate
and resolution the stage trained with, so generating from it needs only the folder and a prompt.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from training.checkpoints import EXPORT_STATE_FILE

DEFAULT_FPS = 16.0


def export_extra(stage: Any) -> dict[str, Any]:
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
    }


def _inference_context(module: torch.nn.Module):
    param = next(module.parameters())
    if param.dtype == torch.float32:
        return contextlib.nullcontext()
    # bf16 training weights: let autocast pick the matmul dtype instead of casting a 2B model to fp32.
    return torch.autocast(device_type=param.device.type, dtype=param.dtype)


def render_sample(stage: Any, step_math: Any, module: torch.nn.Module, path: Path) -> Path:
    """A short video of `stage.sample.prompt` with the current weights (block-AR when the stage is)."""
    from model.generate import generate_video, save_video

    spec = stage.sample
    bucket = stage.buckets[0]
    block = stage.chunk_sizes[0] if stage.chunk_sizes else None
    was_training = module.training
    module.eval()
    try:
        with _inference_context(module):
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
    finally:
        module.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_video(frames, path, fps=stage.target_fps or DEFAULT_FPS)


def generate_from_export(
    export_dir: str | Path,
    prompt: str,
    seconds: float,
    out: str | Path,
    *,
    block_frames: int | None = None,
    steps: int = 20,
    guidance_scale: float = 6.0,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    ema: bool = False,
    device: str = "cpu",
    numerics: str = "diffusers",
    image: str | Path | None = None,
) -> Path:
    """Generate `seconds` of video from a stage export and write it as mp4 (block-AR with `block_frames`)."""
    from model.autoencoders import build_autoencoder
    from model.generate import generate_video, generate_video_to_file, save_video
    from model.pretrained import load_pretrained
    from model.text_encoders import build_text_encoder

    export_dir = Path(export_dir)
    info_file = export_dir / EXPORT_STATE_FILE
    if not info_file.is_file():
        raise FileNotFoundError(f"{export_dir} is not a stage export (no {EXPORT_STATE_FILE})")
    if seconds <= 0:
        raise ValueError(f"--seconds must be > 0, got {seconds}")
    info = json.loads(info_file.read_text())
    model = load_pretrained(export_dir, device=device)
    if ema:
        from safetensors.torch import load_file

        ema_file = export_dir / "ema.safetensors"
        if not ema_file.is_file():
            raise FileNotFoundError(f"--ema: {export_dir} has no ema.safetensors (the stage kept no EMA)")
        model.load_state_dict(load_file(str(ema_file), device=device), strict=False)
    ae, te = info["autoencoder"], info["text_encoder"]
    autoencoder = build_autoencoder(ae["name"], ae["path"], device=device, **ae["options"])
    options = dict(te["options"])
    options.setdefault("max_length", te["max_length"])
    text_encoder = build_text_encoder(te["name"], te["path"], device=device, **options)
    fps = float(info["fps"])
    num_frames = _valid_frames(autoencoder, max(1, round(seconds * fps)))
    options = {
        "num_frames": num_frames,
        "height": height or info["height"],
        "width": width or info["width"],
        "steps": steps,
        "guidance_scale": guidance_scale,
        "seed": seed,
        "numerics": numerics,
        "image": image,
    }
    if block_frames is not None:
        # Block by block into the mp4: memory stays bounded however many seconds are asked for.
        return generate_video_to_file(
            model, autoencoder, text_encoder, prompt, out, fps=fps, block_frames=block_frames, **options
        )
    return save_video(generate_video(model, autoencoder, text_encoder, prompt, **options), out, fps=fps)


def _valid_frames(autoencoder: Any, want: int) -> int:
    """The smallest frame count ≥ `want` that the autoencoder accepts."""
    for frames in range(want, want + 2 * autoencoder.stride[0] + 1):
        try:
            autoencoder.latent_frames(frames)
        except ValueError:
            continue
        return frames
    raise ValueError(f"no valid frame count near {want} for the {autoencoder.name} autoencoder")
