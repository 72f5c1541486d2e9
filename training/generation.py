"""`svp generate`: video from a stage export — from text, from a starting image, or continuing a clip.

A stage export (see `training.checkpoints`) carries in `stage.json` the autoencoder, text encoder, frame rate
and resolution the stage trained with, so generating from it needs only the folder and a prompt. Next to
each mp4 a `<name>.json` records how it was made, including its conditioning (the image's path and sha256,
or the continued clip's path and the frames kept of it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.errors import UserError
from training.checkpoints import EXPORT_STATE_FILE


def load_export(export_dir: str | Path, ema: bool = False, device: str = "cpu") -> tuple[Any, Any, Any, dict]:
    """(model, autoencoder, text encoder, stage.json) of a stage export."""
    from model.autoencoders import build_autoencoder
    from model.pretrained import load_pretrained
    from model.text_encoders import build_text_encoder

    export_dir = Path(export_dir)
    info_file = export_dir / EXPORT_STATE_FILE
    if not info_file.is_file():
        raise FileNotFoundError(f"{export_dir} is not a stage export (no {EXPORT_STATE_FILE})")
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
    return model, autoencoder, text_encoder, info


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
    continue_from: str | Path | None = None,
    precision: str = "native",
    compile: bool = True,
) -> Path:
    """Generate `seconds` of video from a stage export and write it as mp4 (block-AR with `block_frames`),
    from `image` (image-to-video) or after the clip `continue_from` (then `seconds` is the new part).

    On CUDA the fused linear-attention kernel is used and, with `compile`, every block runs compiled
    (`LinearDiT.enable_inference_compile`; a CPU run stays eager); `precision="fp8"` runs the large matmuls
    in float8. The record beside the video says which path was taken (`inference`)."""
    if seconds <= 0:
        raise UserError(f"--seconds must be > 0, got {seconds}")
    _check_conditioning(image, continue_from, block_frames, height, width)
    model, autoencoder, text_encoder, info = load_export(export_dir, ema, device)
    model.enable_inference_compile(compile)
    fps = float(info["fps"])
    options = {
        "steps": steps,
        "guidance_scale": guidance_scale,
        "seed": seed,
        "numerics": numerics,
        "precision": precision,
    }
    record = {
        "export": str(Path(export_dir).resolve()),
        "prompt": prompt,
        "fps": fps,
        "inference": _inference_path(model, device, precision, compile),
        **options,
    }
    loaded = (model, autoencoder, text_encoder)
    frames = max(1, round(seconds * fps))
    if continue_from is not None:
        return _continue_clip(loaded, prompt, continue_from, out, fps, frames, block_frames, options, record)
    options |= {
        "num_frames": _valid_frames(autoencoder, frames),
        "height": height or info["height"],
        "width": width or info["width"],
        "image": image,
    }
    return _generate_new(loaded, prompt, out, fps, block_frames, options, record)


def _inference_path(model: Any, device: str, precision: str, compile: bool) -> str:
    """What the record says about how the video was computed (kernel, matmul precision, compiled)."""
    import torch

    from model import kernels

    dtype = next(model.parameters()).dtype
    compiled = compile and torch.device(device).type == "cuda"
    return f"{kernels.describe_path(device, dtype)}; matmuls: {precision}; compiled: {compiled}"


def _continue_clip(
    loaded: tuple,
    prompt: str,
    clip: str | Path,
    out: str | Path,
    fps: float,
    frames: int,
    block_frames: int,
    options: dict,
    record: dict,
) -> Path:
    """`frames` new frames after the clip `clip`, written after it into `out`."""
    from model.continuation import continue_video_to_file

    path, conditioning = continue_video_to_file(
        *loaded, prompt, clip, out, fps=fps, num_frames=frames, block_frames=block_frames, **options
    )
    return _with_record(path, {**record, "block_frames": block_frames, **conditioning})


def _generate_new(
    loaded: tuple,
    prompt: str,
    out: str | Path,
    fps: float,
    block_frames: int | None,
    options: dict,
    record: dict,
) -> Path:
    """A new video from the prompt (and `options["image"]`, when given), written to `out`."""
    from model.generate import generate_video, generate_video_to_file, save_video

    image = options["image"]
    if image is not None:
        from model.conditioning import image_digest, open_image

        open_image(image)  # an unreadable image is one line before anything runs
        record |= {"image": str(Path(image).resolve()), "image_sha256": image_digest(image)}
    record |= {k: options[k] for k in ("num_frames", "height", "width")} | {"block_frames": block_frames}
    if block_frames is not None:
        # Block by block into the mp4: memory stays bounded however many seconds are asked for.
        path = generate_video_to_file(*loaded, prompt, out, fps=fps, block_frames=block_frames, **options)
    else:
        path = save_video(generate_video(*loaded, prompt, **options), out, fps=fps)
    return _with_record(path, record)


def _check_conditioning(image, continue_from, block_frames, height, width) -> None:
    if continue_from is None:
        return
    if image is not None:
        raise UserError("--continue and --image cannot be combined: a continuation starts from its clip")
    if block_frames is None:
        raise UserError("--continue needs --block-frames: the clip is folded into the block-AR cache")
    if height is not None or width is not None:
        raise UserError("--continue keeps the clip's own size: leave out --height/--width")


def _with_record(path: Path, record: dict) -> Path:
    """Write `record` as `<video>.json` beside the video (how it was made) and return the video's path."""
    Path(path).with_suffix(".json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return Path(path)


def _valid_frames(autoencoder: Any, want: int) -> int:
    """The smallest frame count ≥ `want` that the autoencoder accepts."""
    for frames in range(want, want + 2 * autoencoder.stride[0] + 1):
        try:
            autoencoder.latent_frames(frames)
        except ValueError:
            continue
        return frames
    raise UserError(f"no valid frame count near {want} for the {autoencoder.name} autoencoder")


def write_conditioning_samples(
    export_dir: str | Path,
    out_dir: str | Path,
    prompt: str,
    clip: str | Path,
    *,
    seconds: float,
    block_frames: int,
    **options: Any,
) -> dict[str, Path]:
    """The demo's image-to-video and continuation samples from one export, each with its `.json` record.

    `clip` (an mp4 at the export's frame size: a video it made, or a training clip) gives the starting image —
    its first frame, saved as `start.png` — and is itself continued by `seconds`. Writes `image-to-video.mp4` and
    `continued.mp4` under `out_dir`, both block by block; `options` are `generate_from_export`'s."""
    from PIL import Image

    from model.video_io import read_frames

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = out_dir / "start.png"
    Image.fromarray(read_frames(clip)[0]).save(start)
    common = {"seconds": seconds, "block_frames": block_frames, **options}
    return {
        "start_image": start,
        "image_to_video": generate_from_export(
            export_dir, prompt, out=out_dir / "image-to-video.mp4", image=start, **common
        ),
        "continued": generate_from_export(
            export_dir, prompt, out=out_dir / "continued.mp4", continue_from=clip, **common
        ),
    }
